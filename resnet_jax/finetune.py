"""Fine-tuning: initialise a run from other weights (`config.init_from`), freeze parts of the network
(`config.freeze`, `config.batch_norm.freeze_frozen_stats`) and train parts at other learning rates
(`config.optimizer.lr_multipliers`).

    python -m resnet_jax.main --config configs/cifar.py:resnet20 --workdir runs/ft \
        --config.init_from=runs/pretrained --config.freeze=stem,stage1 --config.optimizer.lr_multipliers=head=10

`config.init_from` is a workdir (its latest checkpoint), a directory written by `python -m resnet_jax.convert`
(the same), or a torchvision/timm `.safetensors` / `.pth` / `.pt` / `.bin` file, converted on the fly for
`config.model.name` (`resnet_jax.convert`). Every variable of the new model (parameters and BatchNorm statistics)
is copied from the source, except those `config.init_exclude` selects (regexes over paths such as
'stage1_unit1/conv1/kernel', or stage names), which keep their fresh initialisation. Its default: the head when
its shape differs from the source's (another number of classes). Anything else that differs is an error naming
the variables: the source is another architecture. The run starts at step 0 in its own workdir; once that holds
a checkpoint, a rerun resumes from it and never reads `init_from` again.

Patterns (`config.freeze`, `config.init_exclude`, the keys of `lr_multipliers`) are regexes matched with
`re.search` against '/'-joined paths relative to the backbone, or stage names: 'stem', 'stage1'..'stage4' (the
last stage also owns the pre-activation nets' final_bn), 'head' (see `models.parameter_groups`). On the command line,
comma-separated: `--config.freeze=stem,stage1`, `--config.optimizer.lr_multipliers=head=10,stage3=2`.

Frozen parameters get a zero update and no weight decay (`optim.make_optimizer`). With
`config.batch_norm.freeze_frozen_stats` (the default), a BatchNorm whose parameters are all frozen also
normalises with its running statistics during training and never updates them (the usual setting for a frozen
detection backbone): `training_apply` runs those BatchNorm modules with `use_running_average=True`.

Every check runs before anything is compiled or written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import convert
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import storage
from resnet_jax.errors import UserError
from resnet_jax.models import counting
from resnet_jax.models import layers as layers_lib


def _flat(variables) -> dict[tuple[str, str], Any]:
  """{(collection, path relative to the backbone): leaf} of a Classifier's (or a backbone's) variables."""
  return {(collection, optim.parameter_path(path)): leaf for collection, tree in variables.items()
          for path, leaf in jax.tree_util.tree_leaves_with_path(dict(tree))}


# ----------------------------------------------------------------------------------------------------------
# Parameter groups: checks, and BatchNorm of frozen parts in inference mode.


def check_parameter_groups(config: ml_collections.ConfigDict, model, image_shape) -> None:
  """Raises UserError for a freeze pattern or lr_multipliers key that selects nothing, or a freeze that leaves
  nothing to train. Traces the model's initialisation for its variable names (no compile)."""
  freeze = optim.as_patterns(config.get('freeze'), 'freeze')
  multipliers = optim.lr_multipliers(config)
  if hasattr(config.optimizer.get('lr_multipliers'), 'items'):
    # Kept as (pattern, factor) pairs: config.json round trips (a ConfigDict key cannot hold a regex's dots).
    config.optimizer.lr_multipliers = multipliers
  if not freeze and not multipliers:
    return
  params = counting.abstract_variables(model, (1, *image_shape))['params']
  paths = [path for _, path in _flat({'params': params})]
  for field, patterns in (('freeze', freeze), ('optimizer.lr_multipliers', [p for p, _ in multipliers])):
    for pattern in patterns:
      if not optim.matches(paths, pattern):
        raise UserError(f"config.{field}: {pattern!r} matches no parameter of {config.model.name} (stage names: "
                        f"{', '.join(models.parameter_groups(paths))}; regexes are matched against paths such as "
                        f"{', '.join(paths[:3])})")
  groups = optim.group_labels(paths, freeze, multipliers)
  if all(group == optim.FROZEN for group in groups.values()):
    raise UserError(f"config.freeze={list(freeze)} freezes every parameter of {config.model.name}: nothing is left "
                    "to train; freeze fewer parts (e.g. everything but 'head')")
  # A factor of 0 trains nothing either (only the BatchNorm statistics would move): the same refusal.
  zero = {pattern for pattern, factor in multipliers if factor == 0}
  if all(group == optim.FROZEN or group == optim.multiplier_label(0.0) for group in groups.values()):
    raise UserError(f"config.optimizer.lr_multipliers gives every parameter of {config.model.name} that "
                    f"config.freeze={list(freeze)} leaves a learning rate of 0 ({', '.join(sorted(zero))}=0): "
                    "nothing is trained; give the parts to train a factor > 0")


def frozen_batch_norms(params, freeze: Sequence[str]) -> frozenset[str]:
  """Paths (relative to the backbone) of the modules whose parameters the `freeze` patterns all freeze."""
  groups = optim.group_labels([path for _, path in _flat({'params': params})], freeze, ())
  frozen = {path.rpartition('/')[0] for path, group in groups.items() if group == optim.FROZEN}
  trained = {path.rpartition('/')[0] for path, group in groups.items() if group != optim.FROZEN}
  return frozenset(frozen - trained)


def _inference_batch_norm(frozen: frozenset[str]) -> Callable:
  """A Flax method interceptor: BatchNorm modules at the paths `frozen` normalise with (and keep) their running
  statistics, as with `use_running_average=True`, whatever the model's `train` flag."""
  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == '__call__' and isinstance(module, layers_lib.BatchNorm)
        and not module.use_running_average and optim.parameter_path(module.path) in frozen):
      variables = {'params': module.variables['params'], 'batch_stats': module.variables['batch_stats']}
      return module.clone(parent=None, use_running_average=True).apply(variables, *args, **kwargs)
    return next_fun(*args, **kwargs)
  return interceptor


def training_apply(model, config: ml_collections.ConfigDict) -> Callable:
  """`model.apply` for the train step: with `config.batch_norm.freeze_frozen_stats` (the default), the BatchNorm
  modules `config.freeze` freezes entirely (`frozen_batch_norms`) run in inference mode. Without, `model.apply`."""
  freeze = optim.as_patterns(config.get('freeze'), 'freeze')
  if not freeze or not config.batch_norm.get('freeze_frozen_stats', True):
    return model.apply

  def apply(variables, *args, **kwargs):
    with nn.intercept_methods(_inference_batch_norm(frozen_batch_norms(variables['params'], freeze))):
      return model.apply(variables, *args, **kwargs)
  return apply


# ----------------------------------------------------------------------------------------------------------
# Initialisation from other weights.


@dataclasses.dataclass
class Initialization:
  """Variables to copy into a fresh train state: {(collection, path): NumPy array}."""
  values: dict[tuple[str, str], np.ndarray]
  fresh: list[str]       # paths that keep their initialisation
  source: str            # for the log line

  def summary(self) -> str:
    fresh = sorted({path.rpartition('/')[0] or path for _, path in self.fresh})
    return (f'initialised {len(self.values)} variables from {self.source}'
            + (f'; fresh: {", ".join(fresh)}' if fresh else ''))


def _read_source(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], str]:
  """The variables of `config.init_from` (Classifier layout: nested under 'backbone') and its description."""
  source = str(config.init_from)
  path = source if storage.is_remote(source) else os.path.expanduser(source)
  if not storage.exists(path):
    raise UserError(f"config.init_from {source} does not exist; give a workdir, a directory written by "
                    f"python -m resnet_jax.convert, or a {' / '.join(convert.FORMATS)} file")
  if storage.is_dir(path):
    try:
      loaded = checkpoints.load(path)
    except UserError as error:
      raise UserError(f'config.init_from: {error}') from None
    variables = jax.tree.map(np.asarray, jax.device_get(loaded.variables))
    return variables, f'{source} (step {loaded.step}, {loaded.config.model.name})'
  if os.path.splitext(path)[1].lower() not in convert.FORMATS:
    raise UserError(f"config.init_from {source} is neither a directory (a workdir or a converted model) nor a "
                    f"weight file ({', '.join(convert.FORMATS)})")
  convert.check_model_name(config.model.name)
  state_dict = convert.load_state_dict(path)
  has_head = any(name.rpartition('module.')[2] == 'fc.weight' for name in state_dict)
  backbone = convert.from_torch_state_dict(state_dict, config.model.name, num_classes=None if has_head else 0,
                                           source=source)
  return ({collection: {'backbone': tree} for collection, tree in backbone.items()},
          f'{source} (converted for {config.model.name})')


def load_initialization(config: ml_collections.ConfigDict, model, image_shape) -> Optional[Initialization]:
  """Reads `config.init_from` and matches it against `model`'s variables; None without init_from. Raises
  UserError for a missing source or one for another architecture (naming the variables that differ). Reads only."""
  if not config.get('init_from'):
    return None
  target = _flat(counting.abstract_variables(model, (1, *image_shape)))
  source_variables, description = _read_source(config)
  source = _flat(source_variables)

  exclude = optim.as_patterns(config.get('init_exclude'), 'init_exclude')
  paths = sorted({path for _, path in target} | {path for _, path in source})
  if config.get('init_exclude') is None:  # default: a head of another shape (or none) starts fresh
    heads = set(optim.matches(paths, 'head'))
    head = lambda flat: {key: leaf.shape for key, leaf in flat.items() if key[1] in heads}
    exclude = ('head',) if head(target) != head(source) else ()
  else:
    for pattern in exclude:
      if not optim.matches(paths, pattern):
        raise UserError(f"config.init_exclude: {pattern!r} matches no variable of {config.model.name} or of "
                        f"{description}")
  excluded = {path for pattern in exclude for path in optim.matches(paths, pattern)}

  order = lambda keys: sorted(keys, key=lambda key: (key[0] != 'params', key[1]))  # parameters first
  target = dict((key, target[key]) for key in order(target))
  source = dict((key, source[key]) for key in order(source))
  missing = [f'{c}/{p}' for (c, p) in target if p not in excluded and (c, p) not in source]
  unexpected = [f'{c}/{p}' for (c, p) in source if p not in excluded and (c, p) not in target]
  shaped = [f'{c}/{p} is {tuple(source[c, p].shape)} there, {tuple(target[c, p].shape)} here'
            for (c, p) in target if p not in excluded and (c, p) in source and source[c, p].shape != target[c, p].shape]
  if missing or unexpected or shaped:
    raise UserError(f"config.init_from {description} does not fit {config.model.name} (another architecture?): "
                    + convert.mismatch_report(missing, unexpected, shaped, 'variables')
                    + "; config.init_exclude lists variables that start fresh" + _layout_hint(target, source))
  values = {key: np.asarray(source[key], target[key].dtype) for key in target if key[1] not in excluded}
  fresh = [key for key in target if key[1] in excluded]
  return Initialization(values=values, fresh=fresh, source=description)


def _layout_hint(target, source) -> str:
  """Names config.model.scan_units when the source and the model differ in that layout alone (scanned units are
  stacked under `stageN_scan`, unrolled ones are `stageN_unitK`): the same network, stored another way."""
  scanned = lambda flat: any('_scan/' in path for _, path in flat)
  if scanned(target) == scanned(source):
    return ''
  return (f"; the source stores its units {'scanned' if scanned(source) else 'unrolled'} and this model "
          f"{'scanned' if scanned(target) else 'unrolled'}: set config.model.scan_units={scanned(source)} to load it")


def initialize(state, init: Optional[Initialization]):
  """`state` (a fresh TrainState) with the variables of `init` copied in, each on its leaf's sharding. The
  optimizer state is left as initialised (it does not depend on the parameters' values)."""
  if init is None:
    return state

  def replace(collection, tree):
    def leaf(path, value):
      key = (collection, optim.parameter_path(path))
      return jax.device_put(init.values[key], value.sharding) if key in init.values else value
    return jax.tree_util.tree_map_with_path(leaf, tree)
  return state.replace(params=replace('params', state.params), batch_stats=replace('batch_stats', state.batch_stats))
