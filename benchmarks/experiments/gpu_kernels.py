"""Candidate GPU-only replacements measured by the GPU session of issue 28 (benchmarks/gpu_session.py), kept here
until a before/after on a GPU says whether they help. Nothing in resnet_jax imports this file.

* `max_pool`: `flax.linen.max_pool` (2-D, NHWC, explicit padding) with a written-out gradient. JAX differentiates
  `reduce_window(max)` into XLA's `select-and-scatter`, which XLA:GPU emits as one thread per output-gradient
  element scattering into the input gradient with atomics (bfloat16 atomics are compare-and-swap loops). The
  gradient here is the same function -- each output's gradient goes to the FIRST maximum of its window in
  row-major window order, which is what select-and-scatter with `ge` picks -- written as elementwise selects and
  interior-padded placements that XLA fuses into ordinary loop fusions, no atomics.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _window_views(xp, window, strides, out_hw):
  """The window offsets (di, dj) in row-major order and, for each, the strided view of the padded input."""
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  for di in range(kh):
    for dj in range(kw):
      view = lax.slice(xp, (0, di, dj, 0), (xp.shape[0], di + sh * (ho - 1) + 1, dj + sw * (wo - 1) + 1,
                                            xp.shape[3]), (1, sh, sw, 1))
      yield di, dj, view


def _pool(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return _pool(x, window, strides, padding)


def _max_pool_fwd(x, window, strides, padding):
  y = _pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  x, y = residuals
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)
  hp, wp = xp.shape[1], xp.shape[2]
  ho, wo = y.shape[1], y.shape[2]
  sh, sw = strides
  found = jnp.zeros(y.shape, bool)
  dxp = None
  zero = jnp.zeros((), dy.dtype)
  for di, dj, view in _window_views(xp, window, strides, (ho, wo)):
    hit = (view == y) & ~found
    found = found | hit
    g = jnp.where(hit, dy, zero)
    # Place g[i, j] at padded position (di + sh*i, dj + sw*j).
    placed = lax.pad(g, zero, ((0, 0, 0), (di, hp - di - (sh * (ho - 1) + 1), sh - 1),
                               (dj, wp - dj - (sw * (wo - 1) + 1), sw - 1), (0, 0, 0)))
    dxp = placed if dxp is None else dxp + placed
  dx = dxp[:, pt:hp - pb, pl:wp - pr, :]
  return (dx.astype(x.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(inputs, window_shape, strides=None, padding='VALID'):
  """`flax.linen.max_pool` for 4-D NHWC inputs with explicit ((t, b), (l, r)) padding, with the gradient above;
  anything else goes to flax's."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  strides = tuple(strides or (1,) * len(window_shape))
  if inputs.ndim != 4 or len(window_shape) != 2 or isinstance(padding, str):
    return _ORIGINAL_MAX_POOL[0](inputs, window_shape, strides=strides, padding=padding) if _ORIGINAL_MAX_POOL \
        else nn.max_pool(inputs, window_shape, strides=strides, padding=padding)
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  return _max_pool(inputs, tuple(window_shape), strides, padding)


_ORIGINAL_MAX_POOL: list = []


def patch_max_pool():
  """Replaces flax.linen.max_pool (what models/resnet.py's ImageNet stem calls) by `max_pool`; returns the undo."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  original = nn.max_pool
  _ORIGINAL_MAX_POOL[:] = [original]
  nn.max_pool = max_pool

  def undo():
    nn.max_pool = original
  return undo
