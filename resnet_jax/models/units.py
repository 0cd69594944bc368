"""Residual units: basic, bottleneck (incl. ResNeXt groups), 1-layer; activation orders (a)-(e); shortcut variants.

One module, `ResidualUnit`, holds every unit of the papers. The network (`resnet.ResNet`) decides the per-unit
facts (stride, channels, how the pre-activation is shared); the unit applies them. A unit computes

    out = post( h(x) * shortcut_factor  +  scale * F(x) * branch_factor )

with h the shortcut (identity, option A zero-padding, or a projection), F the residual branch, `scale` the
runtime multiplier (lesion gates, stochastic-depth masks), and post/branch layout set by `order`.

Activation orders, He et al. 2016 ("Identity Mappings in Deep Residual Networks") Fig. 4 / Table 2, shown for the
basic unit (the bottleneck and 1-layer units follow the same pattern over their convs):

  'original'        (a)  conv-BN-ReLU-conv-BN, add, ReLU                 (He et al. 2015)
  'bn_after_add'    (b)  conv-BN-ReLU-conv, add, BN, ReLU
  'relu_before_add' (c)  conv-BN-ReLU-conv-BN-ReLU, add
  'relu_preact'     (d)  ReLU-conv-BN-ReLU-conv-BN, add
  'full_preact'     (e)  BN-ReLU-conv-BN-ReLU-conv, add                  (ResNet v2)

Pre-activation sharing (`preact`), for orders (d)/(e):
  'branch': the pre-activation feeds the residual branch only; the shortcut sees the raw input (usual unit).
  'shared': the pre-activation is applied before the split and feeds both paths. Used for the network's first
            unit on a stem without activation ("the first activation right after conv1", He et al. 2016 §4) and
            for units whose shortcut changes shape, so projections see the pre-activated input (He et al. 2016
            appendix; KaimingHe/resnet-1k-layers "common BN, ReLU"; fb.resnet.torch preresnet 'both_preact').
  'none':   no pre-activation: the input is already activated (first unit after the ImageNet stem's
            BN-ReLU-max-pool; fb.resnet.torch preresnet 'no_preact').

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
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models import layers as L

UNIT_ORDERS = ("original", "bn_after_add", "relu_before_add", "relu_preact", "full_preact")
PREACT_ORDERS = ("relu_preact", "full_preact")
BLOCKS = ("basic", "bottleneck", "single")
SHORTCUTS = ("identity", "scaling", "exclusive_gate", "shortcut_gate", "conv1x1", "dropout", "none")
SHORTCUT_TYPES = ("A", "B", "C")
PREACT_MODES = ("branch", "shared", "none")
STRIDE_ON = ("3x3", "1x1")

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
    order: activation order (a)-(e).
    preact: 'branch' | 'shared' | 'none' (orders (d)/(e) only).
    shortcut, shortcut_type: variant and A/B/C type.
    projection_norm: BatchNorm after a projection conv.
    shortcut_scale: lambda of 'scaling'. scale_residual: also scale F by 1-lambda.
    gate_bias_init: initial b_g of the gates. shortcut_dropout_rate: rate of 'dropout'.
    zero_init_last: zero-initialise the branch's last BN scale, or its last conv where the branch ends with a
      conv (orders (b) and (e)), so the unit starts as its shortcut (Goyal et al. 2017; timm resnetv2).
  """

  layers: L.LayerFactory
  block: str
  out_features: int
  width: int
  stride: int = 1
  groups: int = 1
  stride_on: str = "3x3"
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
  def __call__(self, x, scale=None, branch_grad_gate=None, shortcut_grad_gate=None):
    """Args: x NHWC; scale: None or (B,) / (1,) multiplier of the branch (lesion gate, stochastic depth);
    branch_grad_gate / shortcut_grad_gate: None or scalar multipliers of the gradient through the branch /
    shortcut (forward unchanged)."""
    fac = self.layers
    order = self.order
    changes_shape = self.stride != 1 or x.shape[-1] != self.out_features

    # Pre-activation, and what each path sees.
    branch_in = shortcut_in = x
    if order in PREACT_ORDERS and self.preact != "none":
      if order == "full_preact":
        pre = fac.norm(name="bn1", relu=True)(x)
      else:
        pre = nn.relu(x)
      branch_in = pre
      if self.preact == "shared":
        shortcut_in = pre

    # Residual branch.
    specs = self.conv_specs()
    zero_last_conv = self.zero_init_last and order in ("bn_after_add", "full_preact")
    y = branch_in
    for i, (features, kernel, stride, groups) in enumerate(specs):
      last = i == len(specs) - 1
      if order == "full_preact":
        if i > 0:
          y = fac.norm(name=f"bn{i + 1}", relu=True)(y)
        y = fac.conv(features, kernel, stride, groups, name=f"conv{i + 1}", zero_init=last and zero_last_conv)(y)
        continue
      y = fac.conv(features, kernel, stride, groups, name=f"conv{i + 1}", zero_init=last and zero_last_conv)(y)
      if not (last and order == "bn_after_add"):  # (b) normalises after the addition
        y = fac.norm(name=f"bn{i + 1}", zero_init=last and self.zero_init_last and not zero_last_conv,
                     relu=not last or order == "relu_before_add")(y)

    # Shortcut.
    h = None
    if self.shortcut != "none":
      if has_projection(self.shortcut, self.shortcut_type, changes_shape):
        h = fac.conv(self.out_features, 1, self.stride, name="proj_conv")(shortcut_in)
        if self.projection_norm:
          h = fac.norm(name="proj_bn")(h)
      elif changes_shape:
        h = L.zero_pad_shortcut(shortcut_in, self.out_features, self.stride)
      else:
        h = shortcut_in

    # Shortcut variants (He et al. 2016 Table 1).
    if self.shortcut in ("exclusive_gate", "shortcut_gate"):
      g = nn.sigmoid(fac.gate(self.out_features, self.stride, self.gate_bias_init, name="gate")(shortcut_in))
      h = h * (1 - g)
      if self.shortcut == "exclusive_gate":
        y = y * g
    elif self.shortcut == "scaling":
      h = h * self.shortcut_scale
      if self.scale_residual:
        y = y * (1 - self.shortcut_scale)
    elif self.shortcut == "dropout":
      h = nn.Dropout(self.shortcut_dropout_rate, deterministic=not fac.train, name="shortcut_dropout")(h)

    # Runtime multipliers: lesion gates / stochastic depth (forward), gradient gates (backward only).
    if scale is not None:
      y = y * jnp.reshape(scale, (-1, 1, 1, 1)).astype(y.dtype)
    if branch_grad_gate is not None:
      y = L.gate_gradient(y, branch_grad_gate)
    if h is not None and shortcut_grad_gate is not None:
      h = L.gate_gradient(h, shortcut_grad_gate)

    out = y if h is None else h + y
    if order == "original":
      out = nn.relu(out)
    elif order == "bn_after_add":
      out = fac.norm(name="bn_out", relu=True)(out)
    return out


class ScanUnit(ResidualUnit):
  """`ResidualUnit` with the (carry, per_unit) -> (carry, None) signature `nn.scan` needs."""

  def __call__(self, x, per_unit):
    return ResidualUnit.__call__(self, x, *per_unit), None

