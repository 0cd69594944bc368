"""The model zoo: ResNet v1/v2, plain nets, ResNeXt, wide ResNet, stochastic depth, DenseNet-BC.

    from resnet_jax.models import create_model, list_models
    model = create_model('cifar_preact_resnet164', survival_prob_last=0.5)
    variables = model.init(jax.random.key(0), x, train=False)
    logits = model.apply(variables, x, train=False)

Module map (each paper concept lives in one place):
  layers.py    conv/norm/activation factories (He init, ghost BatchNorm), the fast/reference kernel seam
               (`KERNELS`), option-A shortcut, stochastic depth, head
  conv.py      the CPU-friendly convolution behind `KERNELS['fast']`
  units.py     residual units: basic / bottleneck (ResNeXt groups) / 1-layer; the activation orders (a)-(e) as
               one table (`ORDERS`); shortcut variants
  resnet.py    `ResNet`: stem -> stages -> head for every residual family; scanned <-> unrolled variables;
               its named parameter groups (stem, stage1.., head)
  densenet.py  `DenseNet` (DenseNet-BC) and its parameter groups
  registry.py  names -> configurations (`create_model`, `list_models`)
  counting.py  `count_params`, `count_macs` (from the jaxpr), `abstract_variables`
"""

from typing import Sequence

from resnet_jax.errors import UserError
from resnet_jax.models import densenet, resnet
from resnet_jax.models.counting import count_macs, count_params
from resnet_jax.models.densenet import DenseNet
from resnet_jax.models.layers import BatchNorm, LayerFactory
from resnet_jax.models.registry import create_model, list_models, model_options
from resnet_jax.models.resnet import ResNet, UnitInfo, scan_variables, unscan_variables


def residual_backbone(model) -> ResNet:
  """The `ResNet` of `model`: the model itself, or the `.backbone` of a wrapper such as a checkpoint's
  `resnet_jax.classifier.Classifier` (which passes `branch_gates` etc. through to it)."""
  inner = getattr(model, "backbone", model)
  if not isinstance(inner, ResNet):
    raise UserError(f"{type(inner).__name__} has no residual units; the lesion and path analyses need a ResNet "
                    "model (any registry name except densenet_*)")
  return inner


def num_residual_units(model) -> int:
  """Number of residual units (the length of `branch_gates` and the grad-gate arrays)."""
  return residual_backbone(model).num_units


def describe_units(model) -> list[UnitInfo]:
  """Per-unit facts (stage, position, stride, channels) in `branch_gates` order."""
  return residual_backbone(model).describe_units()


def parameter_groups(paths: Sequence[str]) -> dict[str, str]:
  """{'stem', 'stage1'.., 'head': regex} of the model whose '/'-joined variable paths are `paths`: the stage names
  of config.freeze / lr_multipliers / init_exclude, defined by each family beside the modules it names."""
  return densenet.parameter_groups(paths) or resnet.parameter_groups(paths)


__all__ = [
    "BatchNorm", "DenseNet", "LayerFactory", "ResNet", "UnitInfo", "count_macs", "count_params", "create_model",
    "describe_units", "list_models", "model_options", "num_residual_units", "parameter_groups", "residual_backbone",
    "scan_variables", "unscan_variables",
]
