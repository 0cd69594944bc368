"""DenseNet and DenseNet-BC for CIFAR (Huang et al. 2017, "Densely Connected Convolutional Networks")."""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.errors import UserError
from resnet_jax.models import layers as layers_lib


class DenseNet(nn.Module):
  """CIFAR DenseNet (Huang et al. 2017 §3 "Implementation Details", Table 2), configurable as in the paper.

  Structure: a 3x3 conv stem with `stem_width` channels (2k for DenseNet-BC, 16 otherwise), three dense blocks of
  equal size on 32x32, 16x16, 8x8 maps, separated by transition layers (BN-ReLU-1x1 conv to
  floor(compression * channels), 2x2 average pooling), then BN-ReLU, global average pooling and the fully
  connected head. Each dense layer sees the concatenation of all earlier feature maps of its block and adds k
  (`growth_rate`) maps: BN-ReLU-3x3 conv, or with the bottleneck ("B") BN-ReLU-1x1 conv (4k maps)-BN-ReLU-3x3
  conv. DenseNet-BC = bottleneck + compression 0.5; depth L has (L-4)/6 layers per block (BC) or (L-4)/3.
  Registry: densenet_bc_100_12 (0.8M), densenet_bc_250_24 (15.3M), densenet_bc_190_40 (25.6M).

  Options:
    depth, growth_rate: L and k of the paper's names.
    bottleneck: the "B" 1x1 bottleneck layer (Table 2's BC rows). bottleneck_factor: its width in units of k (4).
    compression: theta of the transition layers ("C": 0.5; 1.0 = plain DenseNet).
    stem_width: channels of the first conv; None = 2k for BC (paper), 16 otherwise.
    drop_rate: dropout after each conv but the first (the paper's runs without augmentation use 0.2); needs
      the 'dropout' RNG when training. Default 0.
    bn_momentum, bn_epsilon, bn_group_size, dtype, param_dtype, kernels: as `ResNet` (shared
      `layers.LayerFactory`).
    num_classes: classes of the head (10); 0: the pooled features, no head.
  Initialisation as `ResNet`: convs He normal fan_out, BN 1/0, head as torch nn.Linear. DenseNet has no residual
  units: the lesion / path analyses and `branch_gates` do not apply.
  """

  depth: int = 100
  growth_rate: int = 12
  bottleneck: bool = True
  bottleneck_factor: int = 4
  compression: float = 0.5
  stem_width: Optional[int] = None
  drop_rate: float = 0.0
  num_blocks: int = 3
  num_classes: int = 10
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernels: str = "fast"

  @property
  def layers_per_block(self) -> int:
    per_layer = 2 if self.bottleneck else 1
    return (self.depth - 4) // (self.num_blocks * per_layer)

  def check_options(self) -> None:
    per_layer = 2 if self.bottleneck else 1
    if self.depth < 4 or (self.depth - 4) % (self.num_blocks * per_layer):
      raise UserError(f"DenseNet depth {self.depth} must be 4 + {self.num_blocks * per_layer} * layers_per_block "
                      f"(e.g. 100, 190, 250 for DenseNet-BC)")
    if not 0.0 < self.compression <= 1.0:
      raise UserError(f"compression must be in (0, 1], got {self.compression}")
    if self.growth_rate < 1 or self.bottleneck_factor < 1 or self.num_blocks < 1 or self.num_classes < 0:
      raise UserError("growth_rate, bottleneck_factor and num_blocks must be >= 1, num_classes >= 0 (0: pooled "
                      "features)")
    if not 0.0 <= self.drop_rate < 1.0:
      raise UserError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
    if self.bn_group_size is not None and self.bn_group_size < 1:
      raise UserError(f"bn_group_size must be None or a positive int, got {self.bn_group_size!r}")
    layers_lib.canonical_dtype(self.dtype)
    layers_lib.canonical_dtype(self.param_dtype)
    layers_lib.check_kernels(self.kernels)

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_options()
    layers = layers_lib.LayerFactory(
        train=train, dtype=layers_lib.canonical_dtype(self.dtype),
        param_dtype=layers_lib.canonical_dtype(self.param_dtype), bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size, kernels=self.kernels)
    k = self.growth_rate  # the paper's growth rate k

    def dropout(y):
      return nn.Dropout(self.drop_rate, deterministic=not train)(y) if self.drop_rate else y

    stem_width = self.stem_width or (2 * k if self.bottleneck else 16)
    x = layers.conv(stem_width, 3, name="stem_conv")(x.astype(layers.dtype))
    for b in range(self.num_blocks):
      # The block's concatenated feature maps live in one buffer of the block's final width, filled in place:
      # layer i reads the first c_i channels. Same values as concatenating, but XLA compiles it ~3x faster
      # (a concat chain is re-flattened at every layer) and it never holds more than the final buffer.
      c = x.shape[-1]
      buffer = jnp.zeros(x.shape[:-1] + (c + self.layers_per_block * k,), x.dtype)
      buffer = jax.lax.dynamic_update_slice_in_dim(buffer, x, 0, axis=-1)
      for i in range(self.layers_per_block):
        prefix = f"block{b + 1}_layer{i + 1}"
        y = buffer[..., :c]
        if self.bottleneck:
          y = layers.norm(name=f"{prefix}_bn1", relu=True)(y)
          y = dropout(layers.conv(self.bottleneck_factor * k, 1, name=f"{prefix}_conv1")(y))
        y = layers.norm(name=f"{prefix}_bn2", relu=True)(y)
        y = dropout(layers.conv(k, 3, name=f"{prefix}_conv2")(y))
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, y.astype(buffer.dtype), c, axis=-1)
        c += k
      x = buffer
      if b < self.num_blocks - 1:
        features = int(self.compression * x.shape[-1])
        x = layers.norm(name=f"transition{b + 1}_bn", relu=True)(x)
        x = dropout(layers.conv(features, 1, name=f"transition{b + 1}_conv")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = layers.norm(name="final_bn", relu=True)(x)
    return layers_lib.classifier(x, self.num_classes, layers.param_dtype)


def parameter_groups(paths: Sequence[str]) -> Optional[dict[str, str]]:
  """`resnet.parameter_groups` of a `DenseNet` (None for paths of another network): 'stem' (stem_conv),
  'stage{b}' (dense block b and the transition before it: the transition downsamples as a ResNet stage's first
  unit does, and a stage ends at its block's output; the last stage also owns final_bn), 'head'
  (`layers.classifier`)."""
  num_blocks = max((int(match[1]) for match in map(re.compile(r"block(\d+)_").match, paths) if match), default=0)
  if not num_blocks:
    return None
  stages = {f"stage{block}": rf"^block{block}_" + (rf"|^transition{block - 1}_" if block > 1 else "")
            + (r"|^final_bn/" if block == num_blocks else "") for block in range(1, num_blocks + 1)}
  return {"stem": r"^stem_", **stages, "head": r"^head/"}
