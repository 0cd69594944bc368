"""Model registry: the papers' configurations by name; ablations are options (overrides) of these names.

Conventions per family (each follows its source; see `ResNet` for what every option means):

* ImageNet `resnet{18,34,50,101,152,200}`, `plain{18,34}`, `preact_resnet{152,200}`, `resnext*`,
  `wide_resnet50_2`: torchvision / fb.resnet.torch layout: 7x7 stem, shortcut B, bottleneck stride on the 3x3
  ("v1.5"; `stride_on='1x1'` gives the paper's v1), 1000 classes. Parameter counts equal torchvision's.
  `preact_resnet*` use full pre-activation units (He et al. 2016; fb.resnet.torch preresnet).
* "Bag of Tricks" (He et al. 2019 §4.2) with timm's names: `resnet{18,26,34,50,101,152}d` are ResNet-D (deep
  stem of width 32, `stem='deep'`, and the average-pool projection, `downsample='avg'`), `resnet50c` is ResNet-C
  (deep stem only), `resnet50s` the deep stem of width 64 (128 output channels); all stride on the 3x3, which is
  ResNet-B. ResNet-26 is timm's: bottlenecks, 2,2,2,2. Parameter counts equal timm 1.0.31's.
* CIFAR 6n+2 `cifar_resnet{20..1202}`, `cifar_plain{20..110}`, `cifar_preact_resnet{20..110}`: He et al. 2015
  §4.2: widths 16/32/64, option A shortcuts, basic units; 10 classes. `block='single'` gives the 1-layer-unit
  version (He et al. 2016 Table 3) with 2n units per stage.
* CIFAR 9n+2 `cifar_preact_resnet{164,1001}`, `cifar_resnet{164,1001}`: KaimingHe/resnet-1k-layers: bottleneck
  units [1x1,16; 3x3,16; 1x1,64] etc., projection shortcuts where the shape changes, stride on the first 1x1.
  preact: projections are a bare conv fed by the shared BN-ReLU; original units: projection conv + BN.
* `resnext29_{8,16}x64d`: facebookresearch/ResNeXt CIFAR model: 3x3 stem with 64 channels + BN-ReLU, stages of
  3 bottlenecks with planes 64/128/256, shortcut B, stride on the 3x3, original (post-activation) units.
* `densenet_bc_{100_12,190_40,250_24}`: Huang et al. 2017 DenseNet-BC.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.models.densenet import DenseNet
from resnet_jax.models.layers import canonical_dtype
from resnet_jax.models.resnet import ResNet


@dataclasses.dataclass(frozen=True)
class _Entry:
  cls: type
  num_classes: int
  defaults: dict
  # Recomputes stage_sizes when the `block` override changes the units per stage (CIFAR 6n+2 names).
  stages_for_block: Optional[Callable[[str], tuple]] = None


_REGISTRY: dict[str, _Entry] = {}

_IMAGENET_STAGES = {18: ("basic", (2, 2, 2, 2)), 26: ("bottleneck", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                    101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3)),
                    200: ("bottleneck", (3, 24, 36, 3))}


def _imagenet(depth: int, **options) -> _Entry:
  block, stages = _IMAGENET_STAGES[depth]
  defaults = dict(stage_sizes=stages, stage_widths=(64, 128, 256, 512), block=block, stem="imagenet",
                  shortcut_type="B", stride_on="3x3")
  defaults.update(options)
  return _Entry(ResNet, 1000, defaults)


def _cifar_6n2(depth: int, **options) -> _Entry:
  if (depth - 2) % 6:
    raise ValueError(f"depth {depth} is not 6n+2 (He et al. 2015 §4.2: 3 stages of n two-layer units)")
  n = (depth - 2) // 6

  def stages_for_block(block: str) -> tuple:
    if block == "single":
      return (2 * n,) * 3
    if block == "basic":
      return (n,) * 3
    raise UserError(f"the 6n+2 CIFAR names take block='basic' or 'single' (1-layer units), got {block!r}; "
                    "for bottleneck units use the 9n+2 names (cifar_resnet164, cifar_preact_resnet164, ...)")

  defaults = dict(stage_sizes=(n, n, n), stage_widths=(16, 32, 64), block="basic", stem="cifar",
                  shortcut_type="A")
  defaults.update(options)
  return _Entry(ResNet, 10, defaults, stages_for_block)


def _cifar_9n2(depth: int, **options) -> _Entry:
  if (depth - 2) % 9:
    raise ValueError(f"depth {depth} is not 9n+2 (bottleneck CIFAR nets: 3 stages of n three-layer units)")
  n = (depth - 2) // 9
  defaults = dict(stage_sizes=(n, n, n), stage_widths=(16, 32, 64), block="bottleneck", stem="cifar",
                  shortcut_type="B", stride_on="1x1")
  defaults.update(options)
  return _Entry(ResNet, 10, defaults)


def _resnext29(cardinality: int, base_width: int) -> _Entry:
  return _Entry(ResNet, 10, dict(stage_sizes=(3, 3, 3), stage_widths=(64, 128, 256), block="bottleneck",
                                 cardinality=cardinality, base_width=base_width, stem="cifar",
                                 shortcut_type="B", stride_on="3x3"))


def _densenet_bc(depth: int, growth_rate: int) -> _Entry:
  return _Entry(DenseNet, 10, dict(depth=depth, growth_rate=growth_rate, bottleneck=True, compression=0.5))


for _d in (18, 34, 50, 101, 152, 200):
  _REGISTRY[f"resnet{_d}"] = _imagenet(_d)
for _d in (18, 34):
  _REGISTRY[f"plain{_d}"] = _imagenet(_d, shortcut="none")
for _d in (152, 200):
  _REGISTRY[f"preact_resnet{_d}"] = _imagenet(_d, unit_order="full_preact")
# He et al. 2019 ("Bag of Tricks") §4.2 tweaks under timm's names (timm/models/resnet.py resnet50c/d/s, ...).
for _d in (18, 26, 34, 50, 101, 152):
  _REGISTRY[f"resnet{_d}d"] = _imagenet(_d, stem="deep", stem_width=32, downsample="avg")
_REGISTRY["resnet50c"] = _imagenet(50, stem="deep", stem_width=32)
_REGISTRY["resnet50s"] = _imagenet(50, stem="deep", stem_width=64)
_REGISTRY["resnext50_32x4d"] = _imagenet(50, cardinality=32, base_width=4)
_REGISTRY["resnext101_32x4d"] = _imagenet(101, cardinality=32, base_width=4)
_REGISTRY["resnext101_32x8d"] = _imagenet(101, cardinality=32, base_width=8)
_REGISTRY["resnext101_64x4d"] = _imagenet(101, cardinality=64, base_width=4)
_REGISTRY["wide_resnet50_2"] = _imagenet(50, base_width=128)

for _d in (20, 32, 44, 56, 110, 1202):
  _REGISTRY[f"cifar_resnet{_d}"] = _cifar_6n2(_d)
for _d in (20, 32, 44, 56, 110):
  _REGISTRY[f"cifar_plain{_d}"] = _cifar_6n2(_d, shortcut="none")
for _d in (20, 32, 44, 56, 110):
  _REGISTRY[f"cifar_preact_resnet{_d}"] = _cifar_6n2(_d, unit_order="full_preact")
for _d in (164, 1001):
  _REGISTRY[f"cifar_preact_resnet{_d}"] = _cifar_9n2(_d, unit_order="full_preact")
  _REGISTRY[f"cifar_resnet{_d}"] = _cifar_9n2(_d)
_REGISTRY["resnext29_8x64d"] = _resnext29(8, 64)
_REGISTRY["resnext29_16x64d"] = _resnext29(16, 64)
_REGISTRY["densenet_bc_100_12"] = _densenet_bc(100, 12)
_REGISTRY["densenet_bc_190_40"] = _densenet_bc(190, 40)
_REGISTRY["densenet_bc_250_24"] = _densenet_bc(250, 24)


def list_models() -> list[str]:
  """All registry names, sorted."""
  return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
  """The options (keyword overrides) `create_model(name, ...)` accepts."""
  return sorted(_option_names(_entry(name).cls))


def _option_names(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}


def _entry(name: str) -> _Entry:
  if not isinstance(name, str) or name not in _REGISTRY:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    if re.fullmatch(r"cifar_(resnet|preact_resnet|plain)\d+", str(name)):
      hint += (" CIFAR nets are 6n+2 layers deep with basic units (20, 32, 44, 56, 110, 1202) or 9n+2 with "
               "bottleneck units (164, 1001); other depths: the option stage_sizes=(n, n, n).")
    raise UserError(f"unknown model name {name!r}.{hint} See resnet_jax.models.list_models() for all "
                    f"{len(_REGISTRY)} names.")
  return _REGISTRY[name]


# Scalar option annotations (`ResNet`, `DenseNet` fields) and the Python types a value of each may have.
_SCALAR_TYPES = {"bool": (bool, np.bool_), "int": (int, np.integer), "float": (int, float, np.integer, np.floating),
                 "str": (str,)}


def _check_option_types(name: str, cls: type, overrides: dict) -> None:
  """UserError for an option whose value has the wrong type (e.g. 'abc' for a float option): such values would
  otherwise be accepted silently (a non-empty string is a true bool) or fail deep inside the first compile."""
  for field in dataclasses.fields(cls):
    if field.name not in overrides:
      continue
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    optional = annotation.startswith("Optional[")
    kind = annotation[len("Optional["):-1] if optional else annotation
    value = overrides[field.name]
    if kind not in _SCALAR_TYPES or (optional and value is None):
      continue
    if not isinstance(value, _SCALAR_TYPES[kind]) or (kind != "bool" and isinstance(value, (bool, np.bool_))):
      expected = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[kind]
      raise UserError(f"option {field.name} of model {name!r} must be {expected}"
                      f"{' or None' if optional else ''}, got {value!r}")


def create_model(name: str, *, num_classes: Optional[int] = None, **overrides: Any) -> nn.Module:
  """Builds the registry model `name` (a Flax linen Module).

  Args:
    name: a registry name (`list_models()`).
    num_classes: classes of the head; default 10 for CIFAR-family names, 1000 for ImageNet names; 0: no head,
      the model returns the pooled features.
    **overrides: options of the model class (`ResNet` or `DenseNet`; see their docstrings), e.g.
      `create_model('cifar_resnet110', shortcut='exclusive_gate', gate_bias_init=-6.0)`. `dtype` and
      `param_dtype` also accept names ('bfloat16').

  Raises:
    UserError: unknown name (with close matches), unknown option (with the valid ones), invalid option value.
  """
  entry = _entry(name)
  valid = _option_names(entry.cls)
  unknown = sorted(set(overrides) - valid)
  if unknown:
    close = sorted({m for u in unknown for m in difflib.get_close_matches(u, valid, n=1)})
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UserError(f"unknown option(s) {unknown} for model {name!r}; {hint}valid options: {sorted(valid)}")
  _check_option_types(name, entry.cls, overrides)
  kwargs = dict(entry.defaults)
  if entry.stages_for_block is not None and "block" in overrides and "stage_sizes" not in overrides:
    kwargs["stage_sizes"] = entry.stages_for_block(overrides["block"])
  kwargs.update(overrides)
  kwargs["num_classes"] = entry.num_classes if num_classes is None else int(num_classes)
  for key in ("dtype", "param_dtype"):
    if key in kwargs:
      kwargs[key] = canonical_dtype(kwargs[key])
  for key in ("stage_sizes", "stage_widths", "lesioned_units", "out_indices"):
    if kwargs.get(key) is not None:
      try:
        kwargs[key] = tuple(int(v) for v in kwargs[key])
      except (TypeError, ValueError) as e:
        raise UserError(f"{key} must be a sequence of ints, got {kwargs[key]!r}") from e
  model = entry.cls(**kwargs)
  model.check_options()
  return model
