"""Residual units: basic, bottleneck (incl. ResNeXt groups), 1-layer; activation orders (a)-(e); shortcut variants.

One module, `ResidualUnit`, holds every unit of the papers. The network (`resnet.ResNet`) decides the per-unit
facts (stride, channels, how the pre-activation is shared); the unit applies them. A unit computes

    out = post( h(x) * shortcut_factor  +  scale * F(x) * branch_factor )

with h the shortcut (identity, option A zero-padding, or a projection), F the residual branch, `scale` the
runtime multiplier (lesion gates, stochastic-depth masks), and post/branch layout set by `order`.

Activation orders, He et al. 2016 ("Identity Mappings in Deep Residual Networks") Fig. 4 / Table 2: one
`ActivationOrder` each in the table `ORDERS` below, which says where every BN and ReLU of the unit and of the
network goes. Adding or changing an order is one entry of that table.

Pre-activation sharing (`preact`; matters only for orders whose `preactivation` is not 'none', (d) and (e)):
  'branch': the pre-activation feeds the residual branch only; the shortcut sees the raw input (usual unit).
  'shared': the pre-activation is applied before the split and feeds both paths. Used for the network's first
            unit on a stem without activation ("the first activation right after conv1", He et al. 2016 §4) and
            for units whose shortcut changes shape, so projections see the pre-activated input (He et al. 2016
            appendix; KaimingHe/resnet-1k-layers "common BN, ReLU"; fb.resnet.torch preresnet 'both_preact').
  'none':   no pre-activation: the input is already activated (first unit after the ImageNet stem's
            BN-ReLU-max-pool; fb.resnet.torch preresnet 'no_preact').
`ActivationOrder.unit_preact` is the rule that picks one of them for each unit.

Shortcut variants, He et al. 2016 Fig. 2 / Table 1 (`shortcut`):
  'identity'        h(x)                                     (the default; with options A/B/C below)
  'scaling'         lambda*h(x); F scaled by 1-lambda too if `scale_residual`     (Fig. 2(b), rows 3-4)
  'exclusive_gate'  (1-g(x))*h(x) + g(x)*F(x), g = sigmoid(W_g x + b_g)           (Fig. 2(c))
  'shortcut_gate'   (1-g(x))*h(x) + F(x)                                            (Fig. 2(d))
  'conv1x1'         1x1 conv (+BN) on every shortcut                               (Fig. 2(e))
  'dropout'         dropout(h(x)), inverted scaling during training                (Fig. 2(f))
  'none'            no shortcut: a plain unit (He et al. 2015 plain nets; Table 1 "zero shortcut")

Shortcut type, He et al. 2015 §3.3 / Table 3 (`shortcut_type`), for the shortcut h when the variant has one:
  'A': identity; where the shape changes, stride-s subsampling plus zero-padded channels (no parameters).
  'B': identity; where the shape changes, a projection (strided 1x1 conv, + BN).
  'C': a projection on every unit.

Projection of a downsampling unit (`downsample`): 'conv', the strided 1x1 conv (He et al. 2015), or 'avg',
ResNet-D of "Bag of Tricks" (He et al. 2019 §4.2, Fig. 2c): a 2x2/2 average pool (`layers.average_pool_2x2`)
and a stride-1 1x1 conv, so no input position is skipped. Same parameters, same names (proj_conv, proj_bn).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import layers as layers_lib


@dataclasses.dataclass(frozen=True)
class ActivationOrder:
  """Where the BNs and ReLUs go for one activation order of He et al. 2016 Fig. 4 / Table 2.

  Every placement is an activation kind of `layers.LayerFactory.activation`: 'none', 'relu', 'bn' or 'bn_relu'.

  Attributes:
    figure: the panel of He et al. 2016 Fig. 4.
    preactivation: applied to the unit's input before the split (pre-activation units, (d) and (e)).
    after_conv: after every conv of the residual branch but the last.
    after_last_conv: after the branch's last conv, before the addition.
    after_addition: after the addition of shortcut and branch.
    after_stem: after the CIFAR stem's 3x3 conv (the ImageNet stem always ends in BN-ReLU-max-pool).
    after_last_unit: after the last unit, before global pooling and the head.
    projection_norm: BN after a projection shortcut's conv. Full pre-activation projections are a bare conv on
      the pre-activated input (KaimingHe/resnet-1k-layers; fb.resnet.torch preresnet): this reproduces the
      published ResNet-164/1001 parameter counts.
  """

  figure: str
  preactivation: str
  after_conv: str
  after_last_conv: str
  after_addition: str
  after_stem: str
  after_last_unit: str
  projection_norm: bool = True

  def unit_preact(self, index: int, changes_shape: bool, stem_ends_activated: bool) -> str:
    """'branch' | 'shared' | 'none' for unit `index` (0-based) of a network (see the module docstring)."""
    if self.preactivation == "none":
      return "branch"  # nothing to share
    if index == 0:
      return "none" if stem_ends_activated else "shared"
    return "shared" if changes_shape else "branch"


#: He et al. 2016 Fig. 4 / Table 2, shown for the basic unit (bottleneck and 1-layer units follow the same
#: pattern over their convs). Table 2 CIFAR-10 error with ResNet-110 / ResNet-164: (a) 6.61 / 5.93,
#: (b) 8.17 / 6.50, (c) 7.84 / 6.14, (d) 6.71 / 5.91, (e) 6.37 / 5.46.
ORDERS = {
    # (a) conv-BN-ReLU-conv-BN, add, ReLU (He et al. 2015)
    "original": ActivationOrder("a", preactivation="none", after_conv="bn_relu", after_last_conv="bn",
                                after_addition="relu", after_stem="bn_relu", after_last_unit="none"),
    # (b) conv-BN-ReLU-conv, add, BN, ReLU
    "bn_after_add": ActivationOrder("b", preactivation="none", after_conv="bn_relu", after_last_conv="none",
                                    after_addition="bn_relu", after_stem="bn_relu", after_last_unit="none"),
    # (c) conv-BN-ReLU-conv-BN-ReLU, add
    "relu_before_add": ActivationOrder("c", preactivation="none", after_conv="bn_relu", after_last_conv="bn_relu",
                                       after_addition="none", after_stem="bn_relu", after_last_unit="none"),
    # (d) ReLU-conv-BN-ReLU-conv-BN, add; the stem keeps its BN, the first unit's ReLU follows it
    "relu_preact": ActivationOrder("d", preactivation="relu", after_conv="bn_relu", after_last_conv="bn",
                                   after_addition="none", after_stem="bn", after_last_unit="relu"),
    # (e) BN-ReLU-conv-BN-ReLU-conv, add (ResNet v2); the network ends with BN-ReLU before pooling (§4)
    "full_preact": ActivationOrder("e", preactivation="bn_relu", after_conv="bn_relu", after_last_conv="none",
                                   after_addition="none", after_stem="none", after_last_unit="bn_relu",
                                   projection_norm=False),
}

BLOCKS = ("basic", "bottleneck", "single")
SHORTCUTS = ("identity", "scaling", "exclusive_gate", "shortcut_gate", "conv1x1", "dropout", "none")
SHORTCUT_TYPES = ("A", "B", "C")
STRIDE_ON = ("3x3", "1x1")
DOWNSAMPLES = ("conv", "avg")

EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}


def has_projection(shortcut: str, shortcut_type: str, changes_shape: bool) -> bool:
  """Whether a unit's shortcut is a (1x1 conv) projection."""
  if shortcut == "none":
    return False
  return shortcut == "conv1x1" or shortcut_type == "C" or (shortcut_type == "B" and changes_shape)


class ResidualUnit(nn.Module):
  """One residual unit (see the module docstring for the options' papers and tables).

  Attributes:
    layers: the conv/norm factory (precision, BatchNorm mode, train flag).
    block: 'basic' (two 3x3), 'bottleneck' (1x1, 3x3, 1x1) or 'single' (one 3x3; He et al. 2016 Table 3's
      "1-layer skip" ResNet-110).
    out_features: output channels.
    width: channels of the inner convs (basic: = out_features; bottleneck: the ResNeXt template's C*d).
    stride: spatial stride of the unit.
    groups: feature groups of the bottleneck's 3x3 conv (ResNeXt cardinality C).
    stride_on: bottleneck only: '3x3' (ResNet v1.5: torchvision, fb.resnet.torch, ResNeXt) or '1x1' (the
      paper's Caffe models and KaimingHe/resnet-1k-layers).
    downsample: 'conv' (strided 1x1 projection) or 'avg' (ResNet-D: 2x2/2 average pool, then a 1x1 conv).
    order: activation order, a key of `ORDERS` ((a)-(e)).
    preact: 'branch' | 'shared' | 'none' (orders (d)/(e) only; `ActivationOrder.unit_preact`).
    shortcut, shortcut_type: variant and A/B/C type.
    projection_norm: BatchNorm after a projection conv.
    shortcut_scale: lambda of 'scaling'. scale_residual: also scale F by 1-lambda.
    gate_bias_init: initial b_g of the gates. shortcut_dropout_rate: rate of 'dropout'.
    zero_init_last: zero-initialise the branch's last BN scale, or its last conv where the branch ends with a
      conv (`after_last_conv='none'`: orders (b) and (e)), so the unit starts as its shortcut (Goyal et al. 2017; timm resnetv2).
  """

  layers: layers_lib.LayerFactory
  block: str
  out_features: int
  width: int
  stride: int = 1
  groups: int = 1
  stride_on: str = "3x3"
  downsample: str = "conv"
  order: str = "original"
  preact: str = "branch"
  shortcut: str = "identity"
  shortcut_type: str = "B"
  projection_norm: bool = True
  shortcut_scale: float = 0.5
  scale_residual: bool = False
  gate_bias_init: float = -6.0
  shortcut_dropout_rate: float = 0.5
  zero_init_last: bool = False

  def conv_specs(self):
    """(features, kernel, stride, groups) of the branch's convs, in order."""
    if self.block == "basic":
      return [(self.width, 3, self.stride, 1), (self.out_features, 3, 1, 1)]
    if self.block == "single":
      return [(self.out_features, 3, self.stride, 1)]
    s1, s3 = (self.stride, 1) if self.stride_on == "1x1" else (1, self.stride)
    return [(self.width, 1, s1, 1), (self.width, 3, s3, self.groups), (self.out_features, 1, 1, 1)]

  @nn.compact
  def __call__(self, x, branch_scale=None, branch_grad_gate=None, shortcut_grad_gate=None):
    """Args: x NHWC; branch_scale: None or (B,) / (1,) multiplier of the branch (lesion gate x stochastic
    depth); branch_grad_gate / shortcut_grad_gate: None or scalar multipliers of the gradient through the
    branch / shortcut (forward unchanged)."""
    layers = self.layers
    order = ORDERS[self.order]
    changes_shape = self.stride != 1 or x.shape[-1] != self.out_features

    # Pre-activation, and what each path sees.
    branch_in = shortcut_in = x
    if self.preact != "none":
      branch_in = layers.activation(order.preactivation, x, name="bn1")
      if self.preact == "shared":
        shortcut_in = branch_in

    # Residual branch F. BNs are numbered in the order they appear in the unit (bn1 = the pre-activation's).
    bn_offset = 1 if "bn" in order.preactivation else 0
    zero_last_conv = self.zero_init_last and "bn" not in order.after_last_conv
    specs = self.conv_specs()
    y = branch_in
    for i, (features, kernel, stride, groups) in enumerate(specs, start=1):
      last = i == len(specs)
      y = layers.conv(features, kernel, stride, groups, name=f"conv{i}", zero_init=last and zero_last_conv)(y)
      y = layers.activation(order.after_last_conv if last else order.after_conv, y, name=f"bn{i + bn_offset}",
                            zero_init=last and self.zero_init_last)

    # Shortcut.
    h = None
    if self.shortcut != "none":
      if has_projection(self.shortcut, self.shortcut_type, changes_shape):
        if self.downsample == "avg" and self.stride != 1:
          h = layers.conv(self.out_features, 1, 1, name="proj_conv")(
              layers_lib.average_pool_2x2(shortcut_in, self.stride))
        else:
          h = layers.conv(self.out_features, 1, self.stride, name="proj_conv")(shortcut_in)
        if self.projection_norm:
          h = layers.norm(name="proj_bn")(h)
      elif changes_shape:
        h = layers_lib.zero_pad_shortcut(shortcut_in, self.out_features, self.stride)
      else:
        h = shortcut_in

    # Shortcut variants (He et al. 2016 Table 1).
    if self.shortcut in ("exclusive_gate", "shortcut_gate"):
      gate = nn.sigmoid(layers.gate(self.out_features, self.stride, self.gate_bias_init, name="gate")(shortcut_in))
      h = h * (1 - gate)
      if self.shortcut == "exclusive_gate":
        y = y * gate
    elif self.shortcut == "scaling":
      h = h * self.shortcut_scale
      if self.scale_residual:
        y = y * (1 - self.shortcut_scale)
    elif self.shortcut == "dropout":
      h = nn.Dropout(self.shortcut_dropout_rate, deterministic=not layers.train, name="shortcut_dropout")(h)

    # Runtime multipliers: lesion gates / stochastic depth (forward), gradient gates (backward only).
    if branch_scale is not None:
      y = y * jnp.reshape(branch_scale, (-1, 1, 1, 1)).astype(y.dtype)
    if branch_grad_gate is not None:
      y = layers_lib.gate_gradient(y, branch_grad_gate)
    if h is not None and shortcut_grad_gate is not None:
      h = layers_lib.gate_gradient(h, shortcut_grad_gate)

    out = y if h is None else h + y
    return layers.activation(order.after_addition, out, name="bn_out")


class ScanUnit(ResidualUnit):
  """`ResidualUnit` with the (carry, per_unit) -> (carry, None) signature `nn.scan` needs."""

  def __call__(self, x, per_unit):
    return ResidualUnit.__call__(self, x, *per_unit), None

