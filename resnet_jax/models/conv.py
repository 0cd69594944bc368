"""Convolutions for the zoo: `lax.conv_general_dilated` everywhere, rewritten on the CPU backend only.

This is the fast side of `layers.KERNELS`; its plain reference is flax `nn.Conv` (`lax.conv_general_dilated`),
and tests/test_models_conv.py asserts the two agree in values and gradients.

Two problems of XLA:CPU (seen with jax 0.10.2; invisible on GPU/TPU, where cuDNN / the TPU compiler handle
every convolution layout natively):

1. `ConvCanonicalization` (the pass that puts a convolution into the NHWC/HWIO/NHWC form the Eigen/YNNPACK
   kernels need) walks only the ENTRY computation. The backward convolutions JAX emits (input gradient: reversed
   kernel with in/out swapped; kernel gradient: batch and feature swapped) are not in that form, so inside any
   while loop -- `lax.scan` over steps (config.steps_per_dispatch > 1) or over units (model.scan_units) -- they
   fall back to XLA's naive elemental convolution loop.
2. At the top level the kernel-gradient convolutions are canonicalised by transposing both activations every
   step.

So on CPU, for NHWC inputs and HWIO kernels:
  * 1x1 convolutions (no padding, one group) are a strided slice + `dot_general`: forward, input gradient and
    kernel gradient are plain matrix products;
  * other convolutions, grouped ones (ResNeXt) included, get a custom VJP whose two backward convolutions are
    written in canonical NHWC/HWIO/NHWC form (kernel flipped and transposed per group explicitly; for the kernel
    gradient the activations are transposed explicitly, the groups becoming feature groups), so they stay on the
    fast path inside loops too.
What this buys is measured in benchmarks/results/ (cpu_peers_resnet50.jsonl, cpu_cifar_resnet20_dispatch.jsonl,
cpu_resnext50_grouped_conv.jsonl) and quoted in the README's performance table.
Numerics: the same sums in another association order (float32 rounding differences only; tested against lax).
On other backends `conv_general_dilated` is `lax.conv_general_dilated` unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return (tuple(dimension_numbers.lhs_spec) == (0, 3, 1, 2) and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
            and tuple(dimension_numbers.out_spec) == (0, 3, 1, 2))
  return tuple(dimension_numbers) == NHWC


def _pads(padding, x_shape, k_shape, strides):
  if isinstance(padding, str):
    return lax.padtype_to_pads(x_shape[1:3], k_shape[:2], strides, padding)
  return [tuple(p) for p in padding]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with CPU-friendly backward passes when tracing for the CPU backend."""
  ones = (1, 1)
  simple = (jax.default_backend() == 'cpu' and _is_nhwc(dimension_numbers) and lhs.ndim == 4
            and batch_group_count == 1 and tuple(lhs_dilation or ones) == ones
            and tuple(rhs_dilation or ones) == ones)
  if not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  pads = tuple(tuple(int(v) for v in p) for p in _pads(padding, lhs.shape, rhs.shape, strides))
  if rhs.shape[:2] == (1, 1) and feature_group_count == 1 and pads == ((0, 0), (0, 0)):
    x = lhs[:, ::strides[0], ::strides[1], :] if strides != ones else lhs
    return lax.dot_general(x, rhs.reshape(rhs.shape[2:]), (((3,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)
  if preferred_element_type is not None:
    return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=NHWC,
                                    feature_group_count=feature_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)
  # Only here, not for the 1x1 products above: with them too, ResNet-50 batch 8 was x1.35 slower
  # (benchmarks/results/cpu_issue27_r50_all_convs_rejected.jsonl; not analysed: their inputs are often also read
  # by a shortcut, and the in-place update then needs a full copy); without, x1.01 (cpu_issue27_r50_b8.jsonl).
  return _canonical_conv(materialized(lhs), rhs, strides, pads, int(feature_group_count), precision)


def materialized(x):
  """x, read by the convolution and its gradient from one buffer instead of recomputed by each reader.

  XLA:CPU fuses cheap elementwise producers into every consumer, duplicating them. A convolution's input is
  usually such a producer (BatchNorm, ReLU, the residual add), and in a residual stage it is built from the
  previous unit's input by the same ops, so each consumer that is a loop fusion -- above all the kernel
  gradient's transpose of x -- recomputes the residual stream from the start of the stage, in the transpose's
  strided order (issue 27: benchmarks/results/cpu_issue27_layout_copies.md; 38-47% of a CIFAR ResNet-20
  step). `lax.optimization_barrier` does not stop it (XLA:CPU expands barriers before fusion). Writing the
  last example of x back onto itself does: a dynamic-update-slice is done in place on its operand's buffer and
  its consumers read that buffer. The value is x, bit for bit (the gradient passes through unchanged).
  """
  last = x.shape[0] - 1
  return lax.dynamic_update_slice_in_dim(x, lax.slice_in_dim(x, last, last + 1, axis=0), last, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _canonical_conv(x, w, strides, pads, groups, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC, feature_group_count=groups,
                                  precision=precision)


def _canonical_conv_fwd(x, w, strides, pads, groups, precision):
  return _canonical_conv(x, w, strides, pads, groups, precision), (x, w)


def _canonical_conv_bwd(strides, pads, groups, precision, residuals, dy):
  x, w = residuals
  kh, kw, cin_per_group, cout = w.shape
  batch = x.shape[0]
  # Input gradient: dy dilated by the stride, convolved with the flipped kernel, in/out swapped within each
  # group (HWIO: (kh, kw, cout/G, cin)), grouped like the forward convolution.
  w_t = w[::-1, ::-1].reshape(kh, kw, cin_per_group, groups, cout // groups)
  w_t = jnp.transpose(w_t, (0, 1, 4, 3, 2)).reshape(kh, kw, cout // groups, groups * cin_per_group)
  dx_pads = []
  for axis, k in ((1, kh), (2, kw)):
    s, (lo, _) = strides[axis - 1], pads[axis - 1]
    n, m = x.shape[axis], dy.shape[axis]
    dx_pads.append((k - 1 - lo, n - 1 - (m - 1) * s + lo))
  dx = lax.conv_general_dilated(dy, w_t, (1, 1), dx_pads, lhs_dilation=strides, dimension_numbers=NHWC,
                                feature_group_count=groups, precision=precision).astype(x.dtype)
  # Kernel gradient: dw[i, j, c, o] = sum_{b, p, q} x_pad[b, p*s + i, q*s + j, g*C/G + c] dy[b, p, q, o] for o in
  # group g: a convolution of x^T (C/G as batch; (G, B) as features, in G groups) with dy^T (H', W', B, O) dilated
  # by the stride, in canonical form (one group: x^T is (C, H, W, B)).
  xt = x.reshape(batch, x.shape[1], x.shape[2], groups, cin_per_group)
  xt = jnp.transpose(xt, (4, 1, 2, 3, 0)).reshape(cin_per_group, x.shape[1], x.shape[2], groups * batch)
  dyt = jnp.transpose(dy, (1, 2, 0, 3))       # H', W', B, O
  dw_pads = []
  for axis, k in ((1, kh), (2, kw)):
    s, (lo, _) = strides[axis - 1], pads[axis - 1]
    n, m = x.shape[axis], dy.shape[axis]
    dw_pads.append((lo, k + (m - 1) * s - n - lo))
  # Negative high padding crops x (rows no output position reaches).
  crop = [min(0, hi) for _, hi in dw_pads]
  if any(crop):
    xt = xt[:, :x.shape[1] + crop[0], :x.shape[2] + crop[1], :]
    dw_pads = [(lo, max(0, hi)) for lo, hi in dw_pads]
  dw = lax.conv_general_dilated(xt, dyt, (1, 1), dw_pads, rhs_dilation=strides, dimension_numbers=NHWC,
                                feature_group_count=groups, precision=precision)  # C/G, kh, kw, O
  dw = jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)
  return dx, dw


_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


class Conv(nn.Conv):
  """flax `nn.Conv` with `conv_general_dilated` above (same parameters, names and initialisation)."""
  conv_general_dilated: Any = conv_general_dilated
