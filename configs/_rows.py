"""A paper row: one published experiment as a config diff (shared by configs/cifar.py and configs/imagenet.py)."""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Row:
  model: str
  source: str
  published_error: Optional[float]   # %, top-1 test error as the paper reports it (None: plotted only / "fail")
  recipe: str
  dataset: str
  options: tuple = ()                # create_model options: (('shortcut', 'exclusive_gate'), ...)
  overrides: tuple = ()              # other config fields: (('batch_size', 64), ('input.eval_crop_mode', 'ten'))
  note: str = ''


def apply_row(config, name: str, row: Row) -> None:
  """Sets the row's model, dataset, options, overrides and `config.paper` (read by resnet_jax.reproduce)."""
  config.model.name = row.model
  config.dataset.name = row.dataset
  with config.model.unlocked():
    for key, value in row.options:
      config.model[key] = value
  for path, value in row.overrides:
    *sections, key = path.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[key] = value
  config.paper = dict(row=name, source=row.source, published_error=row.published_error, note=row.note)


def lookup(rows: dict, name: str) -> Row:
  if name not in rows:
    raise KeyError(f"{name!r}; rows: {', '.join(sorted(rows))}")
  return rows[name]
