"""The trained network as a whole: input normalisation followed by a backbone from the model registry.

Backbones (`resnet_jax.models.create_model`) take normalised float images. Training, evaluation, checkpoints
and `resnet_jax.evaluate.predict` work with `Classifier`, which takes raw pixels (uint8 or float in [0, 255])
and normalises them with statistics fixed at training time, so a loaded checkpoint needs nothing else to
classify images. The statistics themselves are decided by the data layer (`resnet_jax.data.normalization`);
checkpoints save them through `describe` and rebuild the model with `from_description`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import models
from resnet_jax.config import nested_tuple
from resnet_jax.errors import UserError
from resnet_jax.models.layers import canonical_dtype


class Classifier(nn.Module):
  """Normalises raw pixels, then applies `backbone`. Extra keyword arguments go to the backbone."""
  backbone: nn.Module
  mean: Any = (0.0,)
  std: Any = (1.0,)

  @nn.compact
  def __call__(self, images, train: bool = False, **kwargs):
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
    return self.backbone(x, train=train, **kwargs)


def compute_dtype(name: str) -> jnp.dtype:
  """'auto' is bfloat16 on GPU/TPU and float32 on CPU (XLA:CPU has no fast bf16 convolutions); other names are
  parsed as every dtype of the models is (`canonical_dtype`)."""
  if name == 'auto':
    name = jnp.bfloat16 if jax.default_backend() in ('gpu', 'cuda', 'rocm', 'tpu') else jnp.float32
  try:
    return canonical_dtype(name)
  except UserError as error:
    raise UserError(f"config.model.dtype: {error}, or 'auto'") from None


#: create_model options a run decides itself: config.model must not set them.
RESERVED_OPTIONS = {
    'num_classes': 'the number of classes comes from the dataset',
    'features_only': 'training and evaluation need the logits; use create_model(..., features_only=True) for a '
                     'backbone',
    'out_indices': 'training and evaluation need the logits; use create_model(..., features_only=True, '
                   'out_indices=...) for a backbone',
    'bn_group_size': "set config.batch_norm.mode='ghost' and config.batch_norm.group_size instead",
}


def model_options(model_config) -> dict[str, Any]:
  """The create_model options of `config.model`: every key but `name`, with `dtype` resolved."""
  for key, reason in RESERVED_OPTIONS.items():
    if key in model_config:
      raise UserError(f"config.model.{key} cannot be set: {reason}")
  options = {k: v for k, v in model_config.items() if k != 'name'}
  options['dtype'] = compute_dtype(options.get('dtype', 'auto'))
  return options


def bn_group_size(config) -> Any:
  """The model's `bn_group_size` for `config.batch_norm` ('global': None; 'ghost': its group size)."""
  mode = config.batch_norm.mode
  if mode == 'global':
    return None
  if mode == 'ghost':
    size = config.batch_norm.get('group_size')
    if not size or size <= 0:
      raise UserError("config.batch_norm.mode='ghost' needs config.batch_norm.group_size (examples per BN "
                      "group, e.g. 64 for the papers' per-GPU BN on CIFAR)")
    return int(size)
  raise UserError(f"unknown config.batch_norm.mode {mode!r}; choose global or ghost")


def model_from_config(config, num_classes: int, mean: Any = (0.0,), std: Any = (1.0,)) -> Classifier:
  """Builds the Classifier a config describes; raises UserError for unknown names or options."""
  options = model_options(config.model)
  group = bn_group_size(config)
  if group is not None:
    options['bn_group_size'] = group
  backbone = models.create_model(config.model.name, num_classes=num_classes, **options)
  return Classifier(backbone=backbone, mean=mean, std=std)


def describe(model: Classifier, num_classes: int, image_shape) -> dict[str, Any]:
  """What a checkpoint keeps beside the config to rebuild `model` (`from_description`): its classes, its input
  normalisation and the training image shape, as JSON values."""
  return {'num_classes': int(num_classes), 'mean': model.mean, 'std': model.std, 'image_shape': list(image_shape)}


def from_description(config, description: dict[str, Any]) -> Classifier:
  """The Classifier of `config` that `describe` described (the normalisation as saved, JSON lists back to
  tuples: hashable module attributes)."""
  return model_from_config(config, description['num_classes'], nested_tuple(description['mean']),
                           nested_tuple(description['std']))
