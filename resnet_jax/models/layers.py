"""Layers every model in the zoo shares: one place per paper concept.

* Initialisation (He et al. 2015, "Delving deep into rectifiers"; as fb.resnet.torch and torchvision):
  convolutions draw from N(0, 2 / (k*k*out_channels)) ("kaiming normal, fan_out", untruncated), have no bias;
  BatchNorm starts at gamma=1, beta=0; the classifier is initialised as torch's `nn.Linear` default, which
  torchvision keeps: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
* `LayerFactory`: the conv, norm and activation factories. Every model builds its convolutions and BatchNorms
  through it, so compute dtype, parameter dtype, the BatchNorm mode and the kernels are one setting for the
  whole network.
* `KERNELS`: the one seam between the hand-optimised kernels (`conv.Conv`, `batch_norm_train`) and their plain
  references (`nn.Conv`, `batch_norm_train_reference`), chosen by the models' `kernels` option.
* `BatchNorm`: batch normalisation (Ioffe & Szegedy 2015) with statistics in float32, an optional "ghost"
  group size (the per-GPU BatchNorm of the papers' multi-GPU training) and an optional fused ReLU. Its training
  arithmetic, `batch_norm_train`, has a written-out gradient: BatchNorm and ReLU move most of the bytes of a
  ResNet step (the convolutions do most of the arithmetic), so each pass over the activations they save counts.
* Shortcuts (He et al. 2015 §3.3; He et al. 2016 §3): `zero_pad_shortcut` (option A). Projections (options B/C)
  and the gated / scaled / dropout variants are assembled in `units.ResidualUnit` from `LayerFactory.conv` and
  `gate`.
* Stochastic depth (Huang et al. 2016): `survival_probabilities` (Eq. 4), `stochastic_depth_factors`.
* `gate_gradient`: identity in the forward pass, scaled gradient in the backward pass (Veit et al. 2016 path
  analysis).
* `classifier`: global average pooling and the float32 fully connected layer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.models import conv as conv_lib

Array = jax.Array
Dtype = Any

# ---------------------------------------------------------------------------------------------------------------
# Initialisers
# ---------------------------------------------------------------------------------------------------------------

#: He normal, fan_out mode: N(0, 2 / (kh * kw * out_channels)). fb.resnet.torch `models/init.lua`, torchvision
#: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, resnet-1k-layers. For grouped convolutions torch's
#: fan_out is also out_channels * kh * kw, which is what Flax computes from the (kh, kw, in/groups, out) kernel.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_bias_init(fan_in: int) -> Callable:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch `nn.Linear` default bias init."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """torch `nn.Linear` default weight init, kaiming_uniform with a=sqrt(5): the bias's U(-1/sqrt(fan_in),
  1/sqrt(fan_in)), fan_in = shape[0]."""
  return torch_linear_bias_init(shape[0])(key, shape, dtype)


def canonical_dtype(dtype) -> jnp.dtype:
  """`jnp.dtype` of a floating-point dtype or its name ('float32', 'bfloat16', ...); UserError for anything else."""
  try:
    result = jnp.dtype(dtype)
  except TypeError as e:
    raise UserError(f"unknown dtype {dtype!r}: use a JAX dtype or its name, e.g. 'float32' or 'bfloat16'") from e
  if not jnp.issubdtype(result, jnp.floating):
    raise UserError(f"dtype {dtype!r} is not a floating-point type: use e.g. 'float32' or 'bfloat16'")
  return result


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------------------------------------------


def _grouped(x: Array, group: int) -> Array:
  """(B, ..., C) -> (B/group, group, ..., C): ghost-batch groups on a leading axis (group == B: one group)."""
  return x.reshape((x.shape[0] // group, group) + x.shape[1:])


def one_pass_statistics(xg: Array, shift: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  """Mean and biased variance over `axes`, float32, in ONE pass over the activations: E[d] and E[d^2] of
  d = x - shift, var = E[d^2] - E[d]^2. The two sums read x once (XLA fuses sibling reductions into one kernel);
  the textbook two-pass E[(x - E[x])^2] reads it twice (flax's `use_fast_variance` makes the same trade). The
  shift is the running mean (a per-channel constant, no gradient): E[d] stays small beside the spread once the
  running mean tracks the batches, so the subtraction keeps float32's precision even for large means. At
  initialisation the shift is 0: flax's default arithmetic."""
  d = xg.astype(jnp.float32) - shift
  m1 = jnp.mean(d, axis=axes, keepdims=True)
  m2 = jnp.mean(jnp.square(d), axis=axes, keepdims=True)
  return m1 + shift, jnp.maximum(m2 - jnp.square(m1), 0.0)


def two_pass_statistics(xg: Array, shift: Array, axes: tuple[int, ...]) -> tuple[Array, Array]:
  """The textbook form of `one_pass_statistics`: E[x] and E[(x - E[x])^2], float32 (`shift` unused)."""
  del shift
  xf = xg.astype(jnp.float32)
  mean = jnp.mean(xf, axis=axes, keepdims=True)
  return mean, jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)


def _bn_train_forward(x, scale, bias, shift, group, epsilon, relu, dtype):
  xg = _grouped(x, group)
  axes = tuple(range(1, xg.ndim - 1))
  mean, var = one_pass_statistics(xg, shift, axes)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (xg.astype(jnp.float32) - mean) * (rstd * scale) + bias
  if relu:
    y = jnp.maximum(y, 0.0)
  features = x.shape[-1]
  outputs = (y.astype(dtype).reshape(x.shape), mean.reshape(-1, features), var.reshape(-1, features))
  return outputs, (x, scale, bias, mean, rstd)


def _bn_train_backward(group, epsilon, relu, dtype, residuals, cotangents):
  """The gradient of batch normalisation in two passes over the activations: one fused reduction for
  sum(dy) and sum(dy * x_hat) per channel (and group), one elementwise pass for dx:

    dx = scale * rstd / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))  [+ the terms of the returned mean and
                                                                           variance, for completeness]

  Differentiating the forward arithmetic instead gives XLA more reductions and float32 intermediates to keep.
  With `relu`, the ReLU's mask is recomputed from x (which this gradient reads anyway) rather than kept."""
  del epsilon, dtype
  dy, dmean, dvar = cotangents
  x, scale, bias, mean, rstd = residuals
  xg = _grouped(x, group).astype(jnp.float32)
  dyg = _grouped(dy, group).astype(jnp.float32)
  axes = tuple(range(1, xg.ndim - 1))
  n = math.prod(xg.shape[a] for a in axes)
  x_hat = (xg - mean) * rstd
  if relu:
    dyg = jnp.where(x_hat * scale + bias > 0, dyg, 0.0)
  sum_dy = jnp.sum(dyg, axis=axes, keepdims=True)
  sum_dy_xhat = jnp.sum(dyg * x_hat, axis=axes, keepdims=True)
  dmean = dmean.reshape(mean.shape)
  dvar = dvar.reshape(mean.shape)
  dx = (scale * rstd / n) * (n * dyg - sum_dy - x_hat * sum_dy_xhat) + (dmean + 2.0 * dvar * (xg - mean)) / n
  features = x.shape[-1]
  dscale = jnp.sum(sum_dy_xhat.reshape(-1, features), axis=0)
  dbias = jnp.sum(sum_dy.reshape(-1, features), axis=0)
  return dx.astype(x.dtype).reshape(x.shape), dscale, dbias, jnp.zeros((features,), jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def batch_norm_train(x: Array, scale: Array, bias: Array, shift: Array, group: int, epsilon: float, relu: bool,
                     dtype) -> tuple[Array, Array, Array]:
  """Training-mode batch normalisation (Ioffe & Szegedy 2015), optionally followed by a ReLU.

  Args: x (B, ..., C) in any float dtype; scale, bias, shift (C,) float32 (shift: see `one_pass_statistics`; it
  changes rounding only); group: examples per statistics group (B: whole batch); epsilon; relu; dtype of y.
  Returns (y, mean, var): y like x in `dtype`; mean and biased variance (B/group, C) float32, per group.
  Statistics and arithmetic are float32. The gradient is written out (`_bn_train_backward`): one reduction
  pass and one elementwise pass over the activations, where autodiff of the forward arithmetic takes more.
  """
  return _bn_train_forward(x, scale, bias, shift, group, epsilon, relu, dtype)[0]


batch_norm_train.defvjp(_bn_train_forward, _bn_train_backward)


def batch_norm_train_reference(x, scale, bias, shift, group, epsilon, relu, dtype):
  """`batch_norm_train` written plainly: two-pass statistics, gradient by autodiff. The oracle its written-out
  gradient is tested against (tests/test_models_invariants.py) and `kernels='reference'`'s BatchNorm."""
  xg = _grouped(x, group).astype(jnp.float32)
  axes = tuple(range(1, xg.ndim - 1))
  mean, var = two_pass_statistics(xg, shift, axes)
  y = (xg - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias
  if relu:
    y = jax.nn.relu(y)
  features = x.shape[-1]
  return y.astype(dtype).reshape(x.shape), mean.reshape(-1, features), var.reshape(-1, features)


@dataclasses.dataclass(frozen=True)
class Kernels:
  """One implementation of the two operations whose fast form is written by hand: a Flax conv class with
  `nn.Conv`'s interface, and the training-mode BatchNorm arithmetic (`batch_norm_train`'s signature)."""
  conv: type
  batch_norm_train: Callable


#: The one seam between the optimised kernels and their plain references. 'fast' (the default): `conv.Conv`
#: (XLA:CPU-friendly backward convolutions; lax unchanged on GPU/TPU) and `batch_norm_train` (written-out
#: gradient, one-pass statistics). 'reference': flax `nn.Conv` (`lax.conv_general_dilated`) and
#: `batch_norm_train_reference` (autodiff of the plain arithmetic). The two mixed entries are the before/after
#: measurements of each optimisation alone (benchmarks/). Tests assert fast == reference, values and gradients.
KERNELS = {
    "fast": Kernels(conv_lib.Conv, batch_norm_train),
    "reference": Kernels(nn.Conv, batch_norm_train_reference),
    "lax_conv": Kernels(nn.Conv, batch_norm_train),
    "autodiff_bn": Kernels(conv_lib.Conv, batch_norm_train_reference),
}


def check_kernels(kernels: str) -> None:
  if kernels not in KERNELS:
    raise UserError(f"kernels={kernels!r} is not valid; choose one of {list(KERNELS)}")


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, statistics in float32, optional ghost batches and ReLU.

  Same variables as `flax.linen.BatchNorm` ('params': scale, bias; 'batch_stats': mean, var) and the same
  conventions: `momentum` weights the old running average (0.9 == torch momentum 0.1), the running variance is
  the biased batch variance (unless `running_var='unbiased'`), running averages are not updated while
  initialising.

  Attributes:
    use_running_average: normalise with the running averages (evaluation) instead of batch statistics.
    momentum: running-average decay.
    epsilon: added to the variance.
    group_size: None: statistics over the whole batch this module sees. Under `jit` with a batch sharded over
      devices that is the global batch (XLA inserts the cross-device reduction; no `axis_name` needed).
      An int G: "ghost" BatchNorm, statistics per group of G consecutive examples, as the papers' per-GPU
      BatchNorm (He et al. 2015/2016 trained CIFAR with 64 examples per GPU, ImageNet with 32). Implemented by
      reshaping (B, ...) to (B/G, G, ...); the running averages move towards the mean over groups of the group
      statistics. G must divide the batch size.
    relu: apply a ReLU to the output: the papers' BN-ReLU pairs as one operation, whose gradient recomputes the
      ReLU's mask from the input instead of keeping the normalised tensor (one activation-sized buffer and
      pass less per pair).
    dtype: output dtype (the compute dtype). Statistics and normalisation arithmetic are float32.
    param_dtype: dtype of scale and bias.
    scale_init: initialiser of gamma (ones; zeros for a zero-initialised last BN).
    kernels: the `KERNELS` entry whose training arithmetic to use.
    running_var: 'biased' (flax.linen.BatchNorm's running variance: the batch's biased variance) or 'unbiased'
      (times n / (n - 1), n the values per statistic: torch.nn.BatchNorm2d, Torch7's nn.SpatialBatchNormalization
      (fb.resnet.torch) and Caffe's BatchNorm layer (He et al. 2015) keep this one). Only the running variance,
      i.e. evaluation, differs; normalisation in training always uses the biased batch variance, as all of them.
      Pinned against torch by tests/test_training_parity.py.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: Optional[int] = None
  relu: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros
  kernels: str = "fast"
  running_var: str = "biased"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    scale = self.param("scale", self.scale_init, (features,), self.param_dtype).astype(jnp.float32)
    bias = self.param("bias", self.bias_init, (features,), self.param_dtype).astype(jnp.float32)

    if self.use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - ra_mean.value) * mul + bias
      if self.relu:
        y = jnp.maximum(y, 0.0)
      return y.astype(self.dtype)

    batch = x.shape[0]
    group = batch if self.group_size is None else self.group_size
    if group <= 0 or batch % group:
      raise UserError(
          f"bn_group_size={self.group_size} does not divide the batch size {batch} this BatchNorm sees; "
          "use a group size that divides the (per-call) batch, or bn_group_size=None for whole-batch statistics")
    y, mean, var = KERNELS[self.kernels].batch_norm_train(x, scale, bias, jax.lax.stop_gradient(ra_mean.value), group,
                                    float(self.epsilon), bool(self.relu), jnp.dtype(self.dtype))
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * jnp.mean(mean, axis=0)
      if self.running_var == "unbiased":
        count = group * math.prod(x.shape[1:-1])  # values per statistic: examples of a group x positions
        var = var * (count / max(count - 1, 1))
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * jnp.mean(var, axis=0)
    return y


# ---------------------------------------------------------------------------------------------------------------
# Conv / norm factory
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerFactory:
  """Builds the convolutions, BatchNorms and activations of a model with one set of precision, BatchNorm and
  kernel settings.

  Convolutions: no bias, He normal fan_out init, torch-style symmetric padding k//2 (so a stride-2 3x3 conv
  samples the same positions as the stride-2 1x1 projection and option A's subsampling), `groups` ->
  `feature_group_count` (ResNeXt). `kernels` picks the implementation (`KERNELS`); the layers are the same.
  """

  train: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_group_size: Optional[int] = None
  kernels: str = "fast"
  bn_running_var: str = "biased"

  def conv(self, features: int, kernel_size: int, stride: int = 1, groups: int = 1, *, name: Optional[str] = None,
           zero_init: bool = False) -> nn.Conv:
    pad = kernel_size // 2
    return KERNELS[self.kernels].conv(
        features, (kernel_size, kernel_size), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        feature_group_count=groups, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.zeros if zero_init else he_normal_fan_out, name=name)

  def norm(self, *, name: Optional[str] = None, zero_init: bool = False, relu: bool = False) -> BatchNorm:
    """BatchNorm, or BN-ReLU with `relu` (one fused operation; see `BatchNorm.relu`)."""
    return BatchNorm(
        use_running_average=not self.train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
        group_size=self.bn_group_size, relu=relu, dtype=self.dtype, param_dtype=self.param_dtype,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones, kernels=self.kernels,
        running_var=self.bn_running_var, name=name)

  def activation(self, kind: str, x: Array, *, name: str, zero_init: bool = False) -> Array:
    """Applies one placement of an activation order (`units.ActivationOrder`): 'none', 'relu', 'bn' or
    'bn_relu'; `name` and `zero_init` (gamma = 0) are the BatchNorm's when there is one."""
    if kind == "none":
      return x
    if kind == "relu":
      return nn.relu(x)
    return self.norm(name=name, zero_init=zero_init, relu=kind == "bn_relu")(x)

  def gate(self, features: int, stride: int, bias_init: float, *, name: str) -> nn.Conv:
    """The 1x1 conv of a shortcut gate g(x) = sigmoid(W x + b) (He et al. 2016 Fig. 2(c)/(d)); b starts at
    `bias_init`. Has a bias (it is the b of the formula) and no BatchNorm."""
    return KERNELS[self.kernels].conv(
        features, (1, 1), strides=(stride, stride), padding="VALID", use_bias=True, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=he_normal_fan_out,
        bias_init=nn.initializers.constant(bias_init), name=name)


# ---------------------------------------------------------------------------------------------------------------
# Shortcuts
# ---------------------------------------------------------------------------------------------------------------


def zero_pad_shortcut(x: Array, out_features: int, stride: int) -> Array:
  """Option A (He et al. 2015 §3.3): identity with stride-`stride` subsampling and zero channels appended.

  No parameters. The new channels are appended after the existing ones (fb.resnet.torch concatenates x and 0*x).
  Subsampling keeps positions 0, s, 2s, ... which are the centres a stride-s conv with padding k//2 uses.
  """
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = out_features - x.shape[-1]
  if extra < 0:
    raise UserError(f"option A shortcut cannot reduce channels ({x.shape[-1]} -> {out_features}); "
                    "use shortcut_type='B' or 'C' (projection)")
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


def average_pool_2x2(x: Array, stride: int) -> Array:
  """ResNet-D's shortcut pool (He et al. 2019 §4.2): a 2x2 average pool with stride `stride` as torch's
  AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) in timm's `downsample_avg`.

  Ceil mode keeps the last, partial window of an odd size (11 -> 6 at stride 2, not 5: the strided 1x1 conv and
  the 3x3 branch give 6 there), and that window averages only its valid cells. The padding is on the high side
  only, as torch's ceil mode adds it."""
  pads = tuple((0, -(-(size - 2) // stride) * stride + 2 - size) for size in x.shape[1:3])
  pads = tuple((0, max(0, high)) for _, high in pads)
  return nn.avg_pool(x, (2, 2), strides=(stride, stride), padding=pads, count_include_pad=False)


# ---------------------------------------------------------------------------------------------------------------
# Stochastic depth (Huang et al. 2016)
# ---------------------------------------------------------------------------------------------------------------


def survival_probabilities(num_units: int, survival_prob_last: float) -> np.ndarray:
  """Linear decay rule, Huang et al. 2016 Eq. (4): p_l = 1 - (l / L) (1 - p_L) for units l = 1..L (float32)."""
  if not 0.0 < survival_prob_last <= 1.0:
    raise UserError(f"survival_prob_last must be in (0, 1], got {survival_prob_last} (1.0 = off; Huang et al. "
                    "use 0.5)")
  unit = np.arange(1, num_units + 1, dtype=np.float64)
  return (1.0 - unit / num_units * (1.0 - survival_prob_last)).astype(np.float32)


def stochastic_depth_factors(rng: Optional[Array], num_units: int, survival_prob_last: float, batch_size: int, *,
                             train: bool, per_example: bool) -> Array:
  """Multipliers of the residual branches, shape (L, batch_size) if per_example else (L, 1).

  Training: Bernoulli(p_l) keep masks, p_l from `survival_probabilities` (a dropped unit is its shortcut only).
  Test: p_l, the expected value of the mask (Huang et al. 2016 §3, "we re-calibrate the outputs ... by the
  expected number of times it participates in training"): no inverted scaling.
  """
  probs = jnp.asarray(survival_probabilities(num_units, survival_prob_last))[:, None]
  columns = batch_size if per_example else 1
  if not train:
    return jnp.broadcast_to(probs, (num_units, columns))
  return jax.random.bernoulli(rng, probs, (num_units, columns)).astype(jnp.float32)


def gate_gradient(y: Array, m) -> Array:
  """Returns y unchanged in the forward pass; the backward pass multiplies the incoming gradient by m.

  With m in {0, 1}: m = 1 lets gradient through, m = 0 blocks it (stop_gradient) while the forward value stays
  exactly y. Used by the Veit et al. 2016 path-length analysis.
  """
  m = jnp.asarray(m, y.dtype)
  y_const = jax.lax.stop_gradient(y)
  return y_const + m * (y - y_const)


# ---------------------------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------------------------


def classifier(x: Array, num_classes: int, param_dtype: Dtype, name: str = "head") -> Array:
  """Global average pooling then a fully connected layer, both in float32 (logits are float32 whatever the
  compute dtype). Works for any spatial size. Init: torch `nn.Linear` default (torchvision keeps it).
  num_classes=0: the pooled features, no layer (timm's pre-logits)."""
  x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
  if num_classes == 0:
    return x
  return nn.Dense(num_classes, dtype=jnp.float32, param_dtype=param_dtype, kernel_init=torch_linear_kernel_init,
                  bias_init=torch_linear_bias_init(x.shape[-1]), name=name)(x)
