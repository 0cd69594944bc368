"""ResNet family: stem -> stages of residual units -> head, one configurable class for every residual network.

ImageNet ResNet-18..200 (He et al. 2015 Table 1; ResNet-200 from He et al. 2016), plain nets, CIFAR 6n+2 and
9n+2 nets, pre-activation ResNets (He et al. 2016), ResNeXt (Xie et al. 2017), wide ResNet-50-2, stochastic
depth (Huang et al. 2016), and the analysis hooks of Veit et al. 2016 are all options of `ResNet`. The registry
(`resnet_jax.models.create_model`) names the papers' configurations.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.models import layers as layers_lib
from resnet_jax.models import units as units_lib

STEMS = ("imagenet", "deep", "cifar")
#: Stems that end in BN-ReLU and a 3x3/2 max-pool (overall stride 4 before stage 1).
IMAGENET_STEMS = ("imagenet", "deep")
DOWNSAMPLES = units_lib.DOWNSAMPLES
STOCHASTIC_DEPTH_MODES = ("batch", "example")


@dataclasses.dataclass(frozen=True)
class UnitInfo:
  """Static description of one residual unit (index = position in `branch_gates`): the one source of the
  stride, widths and pre-activation every unit is built with."""
  index: int
  stage: int  # 1-based
  position: int  # 1-based within the stage
  stride: int
  in_features: int
  out_features: int
  preact: str
  width: int = 0  # channels of the inner convs (bottleneck: the ResNeXt template's C*d)

  @property
  def changes_shape(self) -> bool:
    """Downsampling / widening unit (Veit et al. 2016: the units whose removal hurts)."""
    return self.stride != 1 or self.in_features != self.out_features


class ResNet(nn.Module):
  """Residual network: stem, stages of residual units, global average pooling, fully connected head.

  Call: `model.apply(variables, x, train=False, branch_gates=None, branch_grad_gates=None,
  shortcut_grad_gates=None)` with x NHWC float (already normalised), any spatial size the stem and strides allow
  (CIFAR stems: >= 8x8; ImageNet stem: >= 32x32 keeps every stage >= 1x1) and any channel count. Returns float32
  logits (B, num_classes); with num_classes=0 the pooled features (B, C) the head would see (timm's pre-logits);
  with features_only=True a list of NHWC feature maps (see `feature_info`). Training: `train=True, rngs={'dropout': key}, mutable=['batch_stats']` ('dropout' is
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
    stem: 'imagenet': 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (He et al. 2015 Table 1 conv1). 'deep': ResNet-C
      of "Bag of Tricks" (He et al. 2019 §4.2, Fig. 2b): the 7x7 conv becomes three 3x3 convs (the first with
      stride 2) of widths stem_width, stem_width, 2*stem_width, BN-ReLU after the first two, then the same BN,
      ReLU and max-pool (timm's stem_type='deep': conv1.0/1.3/1.6 + bn1). 'cifar': one 3x3 conv (He et al.
      2015 §4.2), followed by BN-ReLU for the post-activation orders, by BN only for order (d), and by nothing
      for order (e), whose first unit applies BN-ReLU before splitting (He et al. 2016 §4).
    stem_width: channels of the stem conv; None (default) = stage_widths[0] (ImageNet 64, CIFAR 16, ResNeXt-29
      64: every paper's choice), so overriding stage_widths keeps the stem in step. For the deep stem: the
      width of its first two convs, the third has twice as many; None = stage_widths[0] // 2 (32: ResNet-C/D
      and timm's *c/*d names; timm's resnet50s is 64).
    downsample: the projection shortcut of a downsampling unit (with shortcut_type 'B' / 'C'). 'conv' (default):
      a strided 1x1 conv + BN (He et al. 2015). 'avg': ResNet-D (He et al. 2019 §4.2, Fig. 2c): a 2x2 average
      pool with stride 2 (ceil mode, padding not counted: timm's avg_down), then a stride-1 1x1 conv + BN, so
      the projection sees every input position instead of a quarter; units of stride 1 have no pool.
    unit_order: activation order of every unit, He et al. 2016 Fig. 4 / Table 2: 'original' (a), 'bn_after_add'
      (b), 'relu_before_add' (c), 'relu_preact' (d), 'full_preact' (e). Pre-activation nets (d)/(e) put an
      activation after the last unit's addition (full_preact: BN+ReLU; relu_preact: ReLU) and share the first
      unit's pre-activation between both paths. Each order is one entry of `units.ORDERS`.
    shortcut_type: 'A' | 'B' | 'C', He et al. 2015 §3.3, Table 3. A: identity, zero-padded channels and strided
      subsampling where the shape changes, no parameters (CIFAR default, §4.2). B: projection (strided 1x1 conv
      + BN) only where the shape changes (ImageNet default). C: projections on every unit. Option A is
      `layers.zero_pad_shortcut`.
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
    projection_norm: BN after projection convs. None (default): the order's `ActivationOrder.projection_norm`
      (BN except for full pre-activation units, whose projections are a bare conv on the pre-activated input).
    stride_on: where a bottleneck's stride sits: '3x3' (ResNet "v1.5": torchvision, fb.resnet.torch, ResNeXt;
      ImageNet and ResNeXt names) or '1x1' (the paper's Caffe models, He et al. 2015 "v1"; KaimingHe/
      resnet-1k-layers' CIFAR bottlenecks, hence the cifar_*164/1001 names). Parameter counts do not depend on
      it; MACs do (ResNet-50: 4.09 G v1.5 vs 3.86 G v1).

  Backbone use (timm's `features_only` contract, which detection and segmentation heads expect):
    features_only: return the feature maps of `out_indices` instead of logits, with the classifier's variable
      tree minus the head (converted and trained checkpoints load into it). Index 0 is the stem's output after
      its activation (ImageNet: before the max-pool, stride 2; CIFAR: stride 1); index s is the output of stage
      s (ImageNet strides 4, 8, 16, 32; CIFAR 1, 2, 4). Pre-activation nets (orders (d), (e)) give the sums after
      each stage, and the last stage's map with the final BN-ReLU applied: as timm's ResNetV2, because the sums
      of a pre-activation net are un-normalised until that final activation (He et al. 2016 §4), and it is the
      map the classifier pools.
    out_indices: which maps, in order; None (default) = all (0..number of stages).

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
    bn_running_var: 'biased' (default; flax's convention) or 'unbiased' (torch, Torch7/fb.resnet.torch and Caffe,
      the papers' frameworks: the batch variance times n/(n-1) enters the running average). Changes only the
      running variance, so evaluation: at CIFAR sizes by under 0.03% (n >= 64 examples x 8 x 8), more where few
      values make a statistic (ResNet-50's last stage at a small input). See `layers.BatchNorm.running_var`.
    dtype: compute dtype ('float32' default; 'bfloat16' on accelerators). param_dtype: parameter dtype (float32).
      BatchNorm statistics, the head and the logits are float32.
    kernels: 'fast' (default) or 'reference' (plain lax convolutions, autodiff BatchNorm), or one of the mixed
      entries of `layers.KERNELS`. Same variables and numerics up to float32 rounding; only speed differs.

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
  downsample: str = "conv"
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
  bn_running_var: str = "biased"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernels: str = "fast"
  features_only: bool = False
  out_indices: Optional[Sequence[int]] = None
  scan_units: bool = False
  remat: bool = False

  # ------------------------------------------------------------------------------------------------ structure

  @property
  def stem_features(self) -> int:
    """Channels the stem outputs (stage 1's input)."""
    if self.stem == "deep":
      return 2 * self.deep_stem_width
    return int(self.stage_widths[0] if self.stem_width is None else self.stem_width)

  @property
  def deep_stem_width(self) -> int:
    """Width of the deep stem's first two 3x3 convs (ResNet-C: 32 for 64 output channels)."""
    return int(self.stage_widths[0] // 2 if self.stem_width is None else self.stem_width)

  @property
  def num_units(self) -> int:
    return int(sum(self.stage_sizes))

  @property
  def order(self) -> units_lib.ActivationOrder:
    return units_lib.ORDERS[self.unit_order]

  def unit_width(self, planes: int) -> int:
    """Inner width of a unit with `planes`: ResNeXt's template (Xie et al. 2017 §3.3, Table 1), floor(planes *
    base_width / 64) * cardinality for bottlenecks (ResNet: 1 x 64 = planes); the planes for other blocks."""
    if self.block == "bottleneck":
      return (planes * self.base_width // 64) * self.cardinality
    return planes

  def describe_units(self) -> list[UnitInfo]:
    """Static per-unit facts in `branch_gates` order; every unit is built from these."""
    infos = []
    in_features = self.stem_features
    for stage, (num_units, planes) in enumerate(zip(self.stage_sizes, self.stage_widths), start=1):
      out_features = planes * units_lib.EXPANSION[self.block]
      for position in range(1, num_units + 1):
        stride = 2 if (stage > 1 and position == 1) else 1  # He et al. 2015 §3.3: the first unit downsamples
        index = len(infos)
        changes_shape = stride != 1 or in_features != out_features
        preact = self.order.unit_preact(index, changes_shape, stem_ends_activated=self.stem in IMAGENET_STEMS)
        infos.append(UnitInfo(index, stage, position, stride, in_features, out_features, preact,
                              self.unit_width(planes)))
        in_features = out_features
    return infos

  def check_options(self) -> None:
    """Raises UserError for invalid option values (called by `create_model` and at trace time)."""
    def choice(name, value, allowed):
      if value not in allowed:
        raise UserError(f"{name}={value!r} is not valid; choose one of {list(allowed)}")
    choice("block", self.block, units_lib.BLOCKS)
    choice("stem", self.stem, STEMS)
    choice("downsample", self.downsample, DOWNSAMPLES)
    choice("unit_order", self.unit_order, units_lib.ORDERS)
    choice("shortcut_type", self.shortcut_type, units_lib.SHORTCUT_TYPES)
    choice("shortcut", self.shortcut, units_lib.SHORTCUTS)
    choice("stride_on", self.stride_on, units_lib.STRIDE_ON)
    layers_lib.check_kernels(self.kernels)
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
    layers_lib.survival_probabilities(self.num_units, self.survival_prob_last)  # checks the range
    if not 0.0 <= self.shortcut_dropout_rate < 1.0:
      raise UserError(f"shortcut_dropout_rate must be in [0, 1), got {self.shortcut_dropout_rate}")
    if self.bn_group_size is not None and (not isinstance(self.bn_group_size, (int, np.integer))
                                           or self.bn_group_size < 1):
      raise UserError(f"bn_group_size must be None or a positive int, got {self.bn_group_size!r}")
    if not 0.0 <= self.bn_momentum < 1.0 or self.bn_epsilon <= 0:
      raise UserError(f"need 0 <= bn_momentum < 1 and bn_epsilon > 0, got {self.bn_momentum}, {self.bn_epsilon}")
    if self.bn_running_var not in ("biased", "unbiased"):
      raise UserError(f"bn_running_var must be 'biased' or 'unbiased', got {self.bn_running_var!r}")
    bad = [u for u in self.lesioned_units if not 0 <= int(u) < self.num_units]
    if bad:
      raise UserError(f"lesioned_units {bad} out of range: the model has {self.num_units} residual units "
                      f"(indices 0..{self.num_units - 1})")
    if (self.stem_width is not None and self.stem_width < 1) or self.num_classes < 0:
      raise UserError("stem_width must be >= 1 and num_classes >= 0 (0: pooled features, no head)")
    if self.stem == "deep" and self.deep_stem_width < 1:
      raise UserError(f"the deep stem needs stem_width >= 1 (default stage_widths[0] // 2, here "
                      f"{self.stage_widths[0]} // 2 = 0)")
    bad = [i for i in self.out_indices or () if not 0 <= int(i) <= len(self.stage_sizes)]
    if bad or (self.out_indices is not None and not self.out_indices):
      raise UserError(f"out_indices {self.out_indices} must be a non-empty selection of 0..{len(self.stage_sizes)} "
                      "(0: the stem, s: stage s)")
    layers_lib.canonical_dtype(self.dtype)
    layers_lib.canonical_dtype(self.param_dtype)

  # ------------------------------------------------------------------------------------------------ forward

  def feature_info(self) -> list[dict]:
    """Channels (`num_chs`), stride (`reduction`) and producing module of each `features_only` output, as
    timm's `feature_info`; e.g. ResNet-50: 256/4, 512/8, 1024/16, 2048/32 for indices 1-4."""
    stem_stride = 2 if self.stem in IMAGENET_STEMS else 1
    info = [dict(index=0, num_chs=self.stem_features, reduction=stem_stride, module="stem_bn")]
    reduction = 2 * stem_stride if self.stem in IMAGENET_STEMS else stem_stride  # after the max-pool
    for stage, planes in enumerate(self.stage_widths, start=1):
      reduction *= 2 if stage > 1 else 1
      info.append(dict(index=stage, num_chs=planes * units_lib.EXPANSION[self.block], reduction=reduction,
                       module=f"stage{stage}"))
    indices = range(len(info)) if self.out_indices is None else self.out_indices
    return [info[int(i)] for i in indices]

  def _per_unit_vector(self, name, value):
    if value is None:
      return None
    value = jnp.asarray(value, jnp.float32)
    if value.shape != (self.num_units,):
      raise UserError(f"{name} must have shape ({self.num_units},) (one entry per residual unit), "
                      f"got {value.shape}")
    return value

  def _branch_scales(self, batch_size: int, train: bool, branch_gates):
    """Each unit's multiplier of its residual branch, shape (num_units, batch_size or 1), or None for all ones:
    lesion gates (Veit et al. 2016 §4: `branch_gates` and `lesioned_units`) times stochastic depth's factor
    (Huang et al. 2016: a Bernoulli(p_l) mask in training, p_l at test time)."""
    gates = self._per_unit_vector("branch_gates", branch_gates)
    if self.lesioned_units:
      kept = np.ones((self.num_units,), np.float32)
      kept[list(self.lesioned_units)] = 0.0
      gates = kept if gates is None else gates * kept
    scales = None if gates is None else jnp.asarray(gates, jnp.float32)[:, None]
    if self.survival_prob_last == 1.0:
      return scales
    rng = None
    if train:
      if not self.has_rng("dropout"):
        raise UserError("stochastic depth (survival_prob_last < 1) needs a 'dropout' RNG when train=True: "
                        "call model.apply(..., rngs={'dropout': key})")
      rng = self.make_rng("dropout")
    factors = layers_lib.stochastic_depth_factors(rng, self.num_units, self.survival_prob_last, batch_size,
                                                  train=train, per_example=self.stochastic_depth_mode == "example")
    return factors if scales is None else scales * factors

  @nn.compact
  def __call__(self, x, train: bool = False, branch_gates=None, branch_grad_gates=None, shortcut_grad_gates=None):
    self.check_options()
    layers = layers_lib.LayerFactory(
        train=train, dtype=layers_lib.canonical_dtype(self.dtype),
        param_dtype=layers_lib.canonical_dtype(self.param_dtype), bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size, kernels=self.kernels,
        bn_running_var=self.bn_running_var)
    per_unit = (self._branch_scales(x.shape[0], train, branch_gates),
                self._per_unit_vector("branch_grad_gates", branch_grad_gates),
                self._per_unit_vector("shortcut_grad_gates", shortcut_grad_gates))
    stem_out, x = self._stem(layers, x.astype(layers.dtype))
    stage_outs = self._stages(layers, x, per_unit)
    x = layers.activation(self.order.after_last_unit, stage_outs[-1], name="final_bn")
    if self.features_only:
      maps = [stem_out, *stage_outs[:-1], x]
      return [maps[int(i)] for i in (range(len(maps)) if self.out_indices is None else self.out_indices)]
    return layers_lib.classifier(x, self.num_classes, layers.param_dtype)

  def _stem(self, layers: layers_lib.LayerFactory, x):
    """ImageNet: 7x7/2 conv, BN-ReLU, 3x3/2 max-pool (He et al. 2015 Table 1 conv1). Deep (ResNet-C, He et al.
    2019 §4.2): 3x3/2, BN-ReLU, 3x3, BN-ReLU, 3x3, then the same BN-ReLU and max-pool. CIFAR: one 3x3 conv
    (§4.2) followed by the activation order's `after_stem`. Returns (activation output, input of stage 1)."""
    if self.stem in IMAGENET_STEMS:
      if self.stem == "imagenet":
        x = layers.conv(self.stem_features, 7, 2, name="stem_conv")(x)
      else:
        width = self.deep_stem_width
        x = layers.conv(width, 3, 2, name="stem_conv1")(x)
        x = layers.norm(name="stem_bn1", relu=True)(x)
        x = layers.conv(width, 3, 1, name="stem_conv2")(x)
        x = layers.norm(name="stem_bn2", relu=True)(x)
        x = layers.conv(self.stem_features, 3, 1, name="stem_conv3")(x)
      x = layers.norm(name="stem_bn", relu=True)(x)
      return x, nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = layers.conv(self.stem_features, 3, 1, name="stem_conv")(x)
    x = layers.activation(self.order.after_stem, x, name="stem_bn")
    return x, x

  def _stages(self, layers: layers_lib.LayerFactory, x, per_unit):
    """Every residual unit, built from `describe_units()`; returns each stage's output. `per_unit`: (branch
    scales, branch gradient gates, shortcut gradient gates), each None or indexed by unit along its first axis."""
    unit_options = dict(
        layers=layers, block=self.block, groups=self.cardinality, stride_on=self.stride_on, order=self.unit_order,
        downsample=self.downsample,
        shortcut=self.shortcut, shortcut_type=self.shortcut_type,
        projection_norm=self.order.projection_norm if self.projection_norm is None else self.projection_norm,
        shortcut_scale=self.shortcut_scale, scale_residual=self.scale_residual, gate_bias_init=self.gate_bias_init,
        shortcut_dropout_rate=self.shortcut_dropout_rate, zero_init_last=self.zero_init_last_bn)

    def structure(info: UnitInfo) -> dict:
      return dict(out_features=info.out_features, width=info.width, stride=info.stride, preact=info.preact)

    def select(start, stop=None):
      return tuple(None if v is None else (v[start] if stop is None else v[start:stop]) for v in per_unit)

    unit_cls = nn.remat(units_lib.ResidualUnit) if self.remat else units_lib.ResidualUnit
    infos = self.describe_units()
    stage_outs = []
    for stage in range(1, len(self.stage_sizes) + 1):
      stage_infos = [info for info in infos if info.stage == stage]
      if not self.scan_units or len(stage_infos) == 1:
        for info in stage_infos:
          x = unit_cls(**structure(info), **unit_options, name=f"stage{stage}_unit{info.position}")(
              x, *select(info.index))
        stage_outs.append(x)
        continue
      # Units 2..n of a stage are identical (stride 1, same widths and pre-activation): one `nn.scan`.
      first, rest = stage_infos[0], stage_infos[1:]
      assert all(structure(info) == structure(rest[0]) for info in rest)
      x = unit_cls(**structure(first), **unit_options, name=f"stage{stage}_unit1")(x, *select(first.index))
      body = nn.remat(units_lib.ScanUnit, prevent_cse=False) if self.remat else units_lib.ScanUnit
      scanned = nn.scan(body, variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=0, length=len(rest))
      x, _ = scanned(**structure(rest[0]), **unit_options, name=f"stage{stage}_scan")(
          x, select(rest[0].index, rest[-1].index + 1))
      stage_outs.append(x)
    return stage_outs


def parameter_groups(paths: Sequence[str]) -> dict[str, str]:
  """The named parts of a `ResNet` (`config.freeze`, `config.optimizer.lr_multipliers`, `config.init_exclude`),
  each a regex matched with re.search against '/'-joined parameter paths such as 'stage1_unit1/conv1/kernel':
  'stem' (every module `_stem` names stem_*), 'stage1'.. (`_stages`' stage{s}_unit{j} and stage{s}_scan; the
  last stage also owns the pre-activation nets' final_bn, as its `features_only` map does), 'head'
  (`layers.classifier`). `paths` (a model's) say how many stages there are."""
  num_stages = max((int(match[1]) for match in map(re.compile(r"stage(\d+)_").match, paths) if match), default=0)
  stages = {f"stage{stage}": rf"^stage{stage}_" + (r"|^final_bn/" if stage == num_stages else "")
            for stage in range(1, num_stages + 1)}
  return {"stem": r"^stem_", **stages, "head": r"^head/"}


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
