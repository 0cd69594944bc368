"""ResNet family: stem -> stages of residual units -> head, one configurable class for every residual network.

ImageNet ResNet-18..200 (He et al. 2015 Table 1; ResNet-200 from He et al. 2016), plain nets, CIFAR 6n+2 and
9n+2 nets, pre-activation ResNets (He et al. 2016), ResNeXt (Xie et al. 2017), wide ResNet-50-2, stochastic
depth (Huang et al. 2016), and the analysis hooks of Veit et al. 2016 are all options of `ResNet`. The registry
(`resnet_jax.models.create_model`) names the papers' configurations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.models import layers as L
from resnet_jax.models import units as U

STEMS = ("imagenet", "cifar")
STOCHASTIC_DEPTH_MODES = ("batch", "example")


@dataclasses.dataclass(frozen=True)
class UnitInfo:
  """Static description of one residual unit (index = position in `branch_gates`)."""
  index: int
  stage: int  # 1-based
  position: int  # 1-based within the stage
  stride: int
  in_features: int
  out_features: int
  preact: str

  @property
  def changes_shape(self) -> bool:
    """Downsampling / widening unit (Veit et al. 2016: the units whose removal hurts)."""
    return self.stride != 1 or self.in_features != self.out_features


class ResNet(nn.Module):
  """Residual network: stem, stages of residual units, global average pooling, fully connected head.

  Call: `model.apply(variables, x, train=False, branch_gates=None, branch_grad_gates=None,
  shortcut_grad_gates=None)` with x NHWC float (already normalised), any spatial size the stem and strides allow
  (CIFAR stems: >= 8x8; ImageNet stem: >= 32x32 keeps every stage >= 1x1) and any channel count. Returns float32
  logits (B, num_classes). Training: `train=True, rngs={'dropout': key}, mutable=['batch_stats']` ('dropout' is
  only needed with stochastic depth or the dropout shortcut).

  Runtime analysis arguments (arrays of shape (num_residual_units,), traced: changing them does not recompile):
    branch_gates: multiplies each unit's residual branch; 0 lesions the unit (its output is its shortcut path
      only; Veit et al. 2016 §4), 1 keeps it. Multiplies with stochastic depth's factor when both are on.
    branch_grad_gates / shortcut_grad_gates: multiply the gradient flowing back through each unit's residual
      branch / shortcut; the forward pass is unchanged (out = h + m*F + (1-m)*stop_gradient(F)). Veit et al.'s
      path-length gradient analysis isolates paths with them (`resnet_jax.analysis.paths`).

  Architecture options (defaults: ImageNet ResNet-18; the registry sets each paper configuration):
    stage_sizes: residual units per stage. He et al. 2015 Table 1 (18: 2,2,2,2; 34/50: 3,4,6,3; 101: 3,4,23,3;
      152: 3,8,36,3); ResNet-200: 3,24,36,3 (He et al. 2016 §4.2); CIFAR: n,n,n with depth 6n+2 (He et al. 2015
      §4.2) or 9n+2 for bottlenecks (He et al. 2016 §4.1).
    stage_widths: "planes" per stage: the basic unit's width, the bottleneck's output / 4 (Table 1:
      64,128,256,512; CIFAR: 16,32,64). The first stage has stride 1, later stages stride 2 in their first unit.
    block: 'basic' (two 3x3), 'bottleneck' (1x1-3x3-1x1, output 4x planes; He et al. 2015 Fig. 5), or 'single'
      (one 3x3 per unit: "ResNet-110 with 1-layer skip", He et al. 2016 Table 3; for the CIFAR 6n+2 names the
      registry doubles the units per stage so the depth stays 6n+2).
    cardinality, base_width: ResNeXt template (Xie et al. 2017 §3.3, Table 1): the bottleneck's inner width is
      floor(planes * base_width / 64) * cardinality and its 3x3 conv has `cardinality` groups (form (c),
      grouped convolution). ResNet: 1, 64. ResNeXt-50 32x4d: 32, 4. Wide ResNet-50-2 (Zagoruyko & Komodakis
      2016; torchvision): 1, 128.
    stem: 'imagenet': 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (He et al. 2015 Table 1 conv1). 'cifar': one 3x3
      conv (He et al. 2015 §4.2), followed by BN-ReLU for the post-activation orders, by BN only for order (d),
      and by nothing for order (e), whose first unit applies BN-ReLU before splitting (He et al. 2016 §4).
    stem_width: channels of the stem conv; None (default) = stage_widths[0] (ImageNet 64, CIFAR 16, ResNeXt-29
      64: every paper's choice), so overriding stage_widths keeps the stem in step.
    unit_order: activation order of every unit, He et al. 2016 Fig. 4 / Table 2: 'original' (a), 'bn_after_add'
      (b), 'relu_before_add' (c), 'relu_preact' (d), 'full_preact' (e). Pre-activation nets (d)/(e) put an
      activation after the last unit's addition (full_preact: BN+ReLU; relu_preact: ReLU) and share the first
      unit's pre-activation between both paths (see `units` docstring).
    shortcut_type: 'A' | 'B' | 'C', He et al. 2015 §3.3, Table 3. A: identity, zero-padded channels and strided
      subsampling where the shape changes, no parameters (CIFAR default, §4.2). B: projection (strided 1x1 conv
      + BN) only where the shape changes (ImageNet default). C: projections on every unit.
    shortcut: He et al. 2016 Table 1 / Fig. 2 variant applied on every unit: 'identity' (default), 'scaling'
      (constant scaling), 'exclusive_gate', 'shortcut_gate' (shortcut-only gating), 'conv1x1' (1x1 conv
      shortcut), 'dropout' (dropout shortcut), 'none' (no shortcut: a plain net, He et al. 2015 §4.1 / Table 2,
      and Table 1's "zero shortcut").
    shortcut_scale: lambda of 'scaling' (Table 1: 0.5).
    scale_residual: 'scaling' also multiplies F by 1-lambda (Table 1's "frozen gating" row: 0.5/0.5).
    gate_bias_init: initial bias b_g of the gates g(x) = sigmoid(W_g x + b_g) (1x1 conv with bias, no BN).
      Table 1: -6 is the best (exclusive gating 8.70%, shortcut-only 6.91%); 0..-5 fail for exclusive gating.
      Default -6.
    shortcut_dropout_rate: drop rate of the 'dropout' shortcut (Table 1: 0.5, "fail"). Uses the 'dropout' RNG.
    projection_norm: BN after projection convs. None (default): BN except for full pre-activation units, whose
      projections are a bare conv on the pre-activated input (KaimingHe/resnet-1k-layers; fb.resnet.torch
      preresnet; this reproduces the published ResNet-164/1001 parameter counts).
    stride_on: where a bottleneck's stride sits: '3x3' (ResNet "v1.5": torchvision, fb.resnet.torch, ResNeXt;
      ImageNet and ResNeXt names) or '1x1' (the paper's Caffe models, He et al. 2015 "v1"; KaimingHe/
      resnet-1k-layers' CIFAR bottlenecks, hence the cifar_*164/1001 names). Parameter counts do not depend on
      it; MACs do (ResNet-50: 4.09 G v1.5 vs 3.86 G v1).

  Regularisation and initialisation:
    survival_prob_last: stochastic depth (Huang et al. 2016 §3, Eq. 4): unit l of L survives training with
      p_l = 1 - (l/L)(1 - p_L); a dropped unit is its shortcut only; at test time the branch is multiplied by
      p_l. Huang et al. use p_L = 0.5. Default 1.0 = off (the deterministic network, no RNG needed). The masks
      come from the 'dropout' RNG once per call, so runs are reproducible and scanned == unrolled.
    stochastic_depth_mode: 'batch' (one draw per unit per mini-batch: Huang et al.'s "for each mini-batch, ...
      randomly drop a subset of layers"; the default) or 'example' (one draw per unit per example, as timm's
      drop_path). Both compute the dropped branches and mask them (no training speed-up).
    zero_init_last_bn: zero-initialise each unit's last BN scale (or its last conv where the branch ends in a
      conv: orders (b), (e)) so every unit starts as its shortcut (Goyal et al. 2017). Default False (papers).
    lesioned_units: static tuple of unit indices (0-based, see `describe_units`) whose branch is removed, the
      compile-time form of `branch_gates`.

  BatchNorm and precision:
    bn_momentum, bn_epsilon: 0.9 (torch momentum 0.1) and 1e-5, as torch / fb.resnet.torch.
    bn_group_size: None: statistics over the whole batch the model sees (global under jit with a sharded batch);
      an int G: ghost BatchNorm, statistics per G consecutive examples (the papers' per-GPU BN: 64 per GPU on
      CIFAR, 32 on ImageNet). See `layers.BatchNorm`.
    dtype: compute dtype ('float32' default; 'bfloat16' on accelerators). param_dtype: parameter dtype (float32).
      BatchNorm statistics, the head and the logits are float32.

  Depth at scale:
    scan_units: run the identical units of each stage (all but the first) as one `nn.scan` (compiles one unit
      per stage: ResNet-1001/1202 compile fast). Parameters of units 2..n of stage s are stacked under
      'stage{s}_scan'; `scan_variables` / `unscan_variables` convert between the layouts; numerics equal the
      unrolled model.
    remat: rematerialise each unit's activations in the backward pass (`nn.remat`): memory for compute.

  Initialisation: convs He normal fan_out, BN gamma=1 beta=0, head as torch nn.Linear (see `layers`).
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_widths: Sequence[int] = (64, 128, 256, 512)
  block: str = "basic"
  cardinality: int = 1
  base_width: int = 64
  stem: str = "imagenet"
  stem_width: Optional[int] = None
  num_classes: int = 1000
  unit_order: str = "original"
  shortcut_type: str = "B"
  shortcut: str = "identity"
  shortcut_scale: float = 0.5
  scale_residual: bool = False
  gate_bias_init: float = -6.0
  shortcut_dropout_rate: float = 0.5
  projection_norm: Optional[bool] = None
  stride_on: str = "3x3"
  survival_prob_last: float = 1.0
  stochastic_depth_mode: str = "batch"
  zero_init_last_bn: bool = False
  lesioned_units: Sequence[int] = ()
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_group_size: Optional[int] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan_units: bool = False
  remat: bool = False

  # ------------------------------------------------------------------------------------------------ structure

  @property
  def stem_features(self) -> int:
    return int(self.stage_widths[0] if self.stem_width is None else self.stem_width)

  @property
  def num_units(self) -> int:
    return int(sum(self.stage_sizes))

  def unit_width(self, planes: int) -> int:
    if self.block == "bottleneck":
      return (planes * self.base_width // 64) * self.cardinality
    return planes

  def describe_units(self) -> list[UnitInfo]:
    """Static per-unit facts in `branch_gates` order."""
    infos = []
    in_features = self.stem_features
    index = 0
    for s, (n, planes) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      out = planes * U.EXPANSION[self.block]
      for j in range(n):
        stride = 2 if (s > 0 and j == 0) else 1
        changes = stride != 1 or in_features != out
        preact = "branch"
        if self.unit_order in U.PREACT_ORDERS:
          if index == 0:
            preact = "none" if self.stem == "imagenet" else "shared"
          elif changes:
            preact = "shared"
        infos.append(UnitInfo(index, s + 1, j + 1, stride, in_features, out, preact))
        in_features = out
        index += 1
    return infos

  def check_options(self) -> None:
    """Raises UserError for invalid option values (called by `create_model` and at trace time)."""
    def choice(name, value, allowed):
      if value not in allowed:
        raise UserError(f"{name}={value!r} is not valid; choose one of {list(allowed)}")
    choice("block", self.block, U.BLOCKS)
    choice("stem", self.stem, STEMS)
    choice("unit_order", self.unit_order, U.UNIT_ORDERS)
    choice("shortcut_type", self.shortcut_type, U.SHORTCUT_TYPES)
    choice("shortcut", self.shortcut, U.SHORTCUTS)
    choice("stride_on", self.stride_on, U.STRIDE_ON)
    choice("stochastic_depth_mode", self.stochastic_depth_mode, STOCHASTIC_DEPTH_MODES)
    if len(self.stage_sizes) != len(self.stage_widths) or not self.stage_sizes:
      raise UserError(f"stage_sizes {tuple(self.stage_sizes)} and stage_widths {tuple(self.stage_widths)} "
                      "must be non-empty and of the same length (one entry per stage)")
    if any(int(n) < 1 for n in self.stage_sizes) or any(int(w) < 1 for w in self.stage_widths):
      raise UserError(f"stage_sizes and stage_widths must be positive, got {tuple(self.stage_sizes)}, "
                      f"{tuple(self.stage_widths)}")
    if self.cardinality < 1 or self.base_width < 1:
      raise UserError("cardinality and base_width must be >= 1")
    if self.block != "bottleneck" and (self.cardinality != 1 or self.base_width != 64):
      raise UserError(f"cardinality/base_width (ResNeXt, wide ResNet) need block='bottleneck', got {self.block!r}")
    if self.block == "bottleneck":
      for planes in self.stage_widths:
        if self.unit_width(planes) < self.cardinality:
          raise UserError(f"bottleneck width of stage with {planes} planes is < cardinality; raise base_width")
    if not 0.0 < self.survival_prob_last <= 1.0:
      raise UserError(f"survival_prob_last must be in (0, 1], got {self.survival_prob_last} (1.0 = off)")
    if not 0.0 <= self.shortcut_dropout_rate < 1.0:
      raise UserError(f"shortcut_dropout_rate must be in [0, 1), got {self.shortcut_dropout_rate}")
    if self.bn_group_size is not None and (not isinstance(self.bn_group_size, (int, np.integer))
                                           or self.bn_group_size < 1):
      raise UserError(f"bn_group_size must be None or a positive int, got {self.bn_group_size!r}")
    if not 0.0 <= self.bn_momentum < 1.0 or self.bn_epsilon <= 0:
      raise UserError(f"need 0 <= bn_momentum < 1 and bn_epsilon > 0, got {self.bn_momentum}, {self.bn_epsilon}")
    bad = [u for u in self.lesioned_units if not 0 <= int(u) < self.num_units]
    if bad:
      raise UserError(f"lesioned_units {bad} out of range: the model has {self.num_units} residual units "
                      f"(indices 0..{self.num_units - 1})")
    if (self.stem_width is not None and self.stem_width < 1) or self.num_classes < 1:
      raise UserError("stem_width and num_classes must be >= 1")
    L.canonical_dtype(self.dtype)
    L.canonical_dtype(self.param_dtype)

  # ------------------------------------------------------------------------------------------------ forward

  def _runtime_vector(self, name, value):
    if value is None:
      return None
    value = jnp.asarray(value, jnp.float32)
    if value.shape != (self.num_units,):
      raise UserError(f"{name} must have shape ({self.num_units},) (one entry per residual unit), "
                      f"got {value.shape}")
    return value

  @nn.compact
  def __call__(self, x, train: bool = False, branch_gates=None, branch_grad_gates=None, shortcut_grad_gates=None):
    self.check_options()
    dtype = L.canonical_dtype(self.dtype)
    param_dtype = L.canonical_dtype(self.param_dtype)
    fac = L.LayerFactory(train=train, dtype=dtype, param_dtype=param_dtype, bn_momentum=self.bn_momentum,
                         bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size)
    num_units = self.num_units
    batch = x.shape[0]

    # Per-unit runtime multipliers of the residual branches, shape (U, B) or (U, 1), or None.
    gates = self._runtime_vector("branch_gates", branch_gates)
    if self.lesioned_units:
      static = np.ones((num_units,), np.float32)
      static[list(self.lesioned_units)] = 0.0
      gates = static if gates is None else gates * static
    scale = None if gates is None else jnp.asarray(gates, jnp.float32)[:, None]
    if self.survival_prob_last < 1.0:
      rng = None
      if train:
        if not self.has_rng("dropout"):
          raise UserError("stochastic depth (survival_prob_last < 1) needs a 'dropout' RNG when train=True: "
                          "call model.apply(..., rngs={'dropout': key})")
        rng = self.make_rng("dropout")
      sd = L.stochastic_depth_scales(rng, L.survival_probabilities(num_units, self.survival_prob_last), batch,
                                     train=train, per_example=self.stochastic_depth_mode == "example")
      scale = sd if scale is None else scale * sd
    bgg = self._runtime_vector("branch_grad_gates", branch_grad_gates)
    sgg = self._runtime_vector("shortcut_grad_gates", shortcut_grad_gates)

    def per_unit(lo, hi=None):
      pick = (lambda a: None if a is None else a[lo]) if hi is None else (
          lambda a: None if a is None else a[lo:hi])
      return (pick(scale), pick(bgg), pick(sgg))

    # Stem.
    x = x.astype(dtype)
    if self.stem == "imagenet":
      x = fac.conv(self.stem_features, 7, 2, name="stem_conv")(x)
      x = fac.norm(name="stem_bn", relu=True)(x)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = fac.conv(self.stem_features, 3, 1, name="stem_conv")(x)
      if self.unit_order != "full_preact":
        x = fac.norm(name="stem_bn", relu=self.unit_order not in U.PREACT_ORDERS)(x)

    # Stages.
    projection_norm = (self.unit_order != "full_preact") if self.projection_norm is None else self.projection_norm
    common = dict(layers=fac, block=self.block, groups=self.cardinality, stride_on=self.stride_on,
                  order=self.unit_order, shortcut=self.shortcut, shortcut_type=self.shortcut_type,
                  projection_norm=projection_norm, shortcut_scale=self.shortcut_scale,
                  scale_residual=self.scale_residual, gate_bias_init=self.gate_bias_init,
                  shortcut_dropout_rate=self.shortcut_dropout_rate, zero_init_last=self.zero_init_last_bn)
    unit_cls = nn.remat(U.ResidualUnit) if self.remat else U.ResidualUnit
    infos = self.describe_units()
    for s, (n, planes) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      out, width = planes * U.EXPANSION[self.block], self.unit_width(planes)
      first = infos[sum(self.stage_sizes[:s])]
      x = unit_cls(out_features=out, width=width, stride=first.stride, preact=first.preact, **common,
                   name=f"stage{s + 1}_unit1")(x, *per_unit(first.index))
      if n == 1:
        continue
      if self.scan_units:
        body = nn.remat(U.ScanUnit, prevent_cse=False) if self.remat else U.ScanUnit
        scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True, "dropout": True}, in_axes=0, length=n - 1)
        x, _ = scanned(out_features=out, width=width, **common, name=f"stage{s + 1}_scan")(
            x, per_unit(first.index + 1, first.index + n))
      else:
        for j in range(1, n):
          x = unit_cls(out_features=out, width=width, **common, name=f"stage{s + 1}_unit{j + 1}")(
              x, *per_unit(first.index + j))

    if self.unit_order == "full_preact":
      x = fac.norm(name="final_bn", relu=True)(x)
    elif self.unit_order == "relu_preact":
      x = nn.relu(x)
    return L.classifier(x, self.num_classes, param_dtype)


# ---------------------------------------------------------------------------------------------------------------
# Scanned <-> unrolled variables
# ---------------------------------------------------------------------------------------------------------------


def _stage_groups(model: ResNet):
  for s, n in enumerate(model.stage_sizes):
    if n >= 2:
      yield f"stage{s + 1}_scan", [f"stage{s + 1}_unit{j + 1}" for j in range(1, n)]


def scan_variables(variables, model: ResNet):
  """Unrolled-layout variables (scan_units=False) -> the layout of the same model with scan_units=True."""
  out = {}
  for col, tree in variables.items():
    tree = dict(tree)
    for scan_name, names in _stage_groups(model):
      if names[0] in tree:
        stacked = [tree.pop(name) for name in names]
        tree[scan_name] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stacked)
    out[col] = tree
  return out


def unscan_variables(variables, model: ResNet):
  """Scanned-layout variables (scan_units=True) -> the unrolled layout (scan_units=False)."""
  out = {}
  for col, tree in variables.items():
    tree = dict(tree)
    for scan_name, names in _stage_groups(model):
      if scan_name in tree:
        stacked = tree.pop(scan_name)
        for j, name in enumerate(names):
          tree[name] = jax.tree_util.tree_map(lambda a, j=j: a[j], stacked)
    out[col] = tree
  return out
