r"""Issue 27, second pass: the kernel gradient of resnet_jax.models.conv's custom VJP without transposing x and dy.

`conv._canonical_conv_bwd` computes dw as a convolution of x^T (C, H, W, B) with dy^T (H', W', B, O), so every
spatial convolution's backward pass transposes both activations (118 + 31 ms of a CIFAR ResNet-20 step on the
loaded machine: benchmarks/results/cpu_issue27_layout_copies.md). Two forms that contract the batch and the
output positions as a matrix product instead, on x and dy as they lie (NHWC):

  shifted  kh*kw matrix products: dw[i, j] = sum over (b, p, q) of x_pad[b, p*s + i, q*s + j, :] (x) dy[b, p, q, :]
           -- the strided slice of the padded x for tap (i, j), (B*H'*W', C)^T @ (B*H'*W', O) -> (C, O);
           stacked into HWIO. Reads x kh*kw times.
  im2col   one matrix product over the patches: (B*H'*W', kh*kw*C)^T @ (B*H'*W', O) -> (kh*kw*C, O) -> HWIO.
           Writes the patches (kh*kw times x) once.
  *_dy     the same products with dy as the left operand (dy^T @ taps -> (O, C), transposed back; see _contract).
Grouped convolutions (ResNeXt): the groups are a batch dimension of the product.

This script is the "after" side of an A/B: it replaces the kernel gradient of conv._canonical_conv_bwd (the
input gradient is unchanged) when ISSUE27_DW is set, then runs `python -m resnet_jax.benchmark` with the
remaining arguments. The switch lives only here (nothing in resnet_jax reads it).

  ISSUE27_DW=shifted python benchmarks/experiments/issue27_kernel_grad.py --config configs/default.py \
      --config.model.name=cifar_resnet20 --synthetic --steps 5
  python benchmarks/experiments/issue27_kernel_grad.py --check   # values/gradients of both forms against lax
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax import lax  # pylint: disable=g-import-not-at-top,wrong-import-position

from resnet_jax.models import conv  # pylint: disable=g-import-not-at-top,wrong-import-position


def _padded_taps(x, dy_shape, w_shape, strides, pads):
  """x padded as the forward convolution pads it (cropped where no output reaches), and the (i, j) taps'
  strided slices, each (B, H', W', C): x_pad[:, p*s + i, q*s + j, :]."""
  kh, kw = w_shape[:2]
  config = [(0, 0, 0)]
  for axis, k in ((1, kh), (2, kw)):
    s, (lo, _) = strides[axis - 1], pads[axis - 1]
    n, m = x.shape[axis], dy_shape[axis]
    config.append((lo, k + (m - 1) * s - n - lo, 0))  # negative high padding crops rows no output reaches
  config.append((0, 0, 0))
  x_pad = lax.pad(x, jnp.zeros((), x.dtype), config)
  (sh, sw), (oh, ow) = strides, dy_shape[1:3]
  taps = []
  for i in range(kh):
    for j in range(kw):
      taps.append(lax.slice(x_pad, (0, i, j, 0), (x.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1,
                                                   x.shape[3]), (1, sh, sw, 1)))
  return taps


def _contract(taps, dy, groups, precision, dy_first):
  """sum over (b, p, q) of taps[..., t, g, c] dy[..., g, o] -> (t, c, G*o), the groups a batch dimension.

  XLA:CPU gives a dot's left operand its contracting dimension minor (row-major (M, K)); with the positions
  contracted that is a transpose of the left operand. dy_first (the `_dy` forms) puts dy on the left, so dy is
  transposed once per convolution instead of x's taps (kh*kw times x)."""
  b, oh, ow, cout = dy.shape
  cin = taps.shape[-1]
  taps = taps.reshape(b, oh, ow, taps.shape[3], groups, cin // groups)
  dyg = dy.reshape(b, oh, ow, groups, cout // groups)
  if dy_first:
    dw = lax.dot_general(dyg, taps, (((0, 1, 2), (0, 1, 2)), ((3,), (4,))), precision=precision)  # G, O/G, T, C/G
    dw = jnp.transpose(dw, (2, 3, 0, 1))
  else:
    dw = lax.dot_general(taps, dyg, (((0, 1, 2), (0, 1, 2)), ((4,), (3,))), precision=precision)  # G, T, C/G, O/G
    dw = jnp.transpose(dw, (1, 2, 0, 3))
  # T, C/G, G, O/G: output channel g*O/G + o, HWIO's order
  return dw.reshape(taps.shape[3], cin // groups, cout)


def kernel_grad_shifted(x, dy, w_shape, strides, pads, groups, precision, dy_first=False):
  kh, kw, cin_per_group, cout = w_shape
  dws = [_contract(tap[:, :, :, None, :], dy, groups, precision, dy_first)
         for tap in _padded_taps(x, dy.shape, w_shape, strides, pads)]
  return jnp.concatenate(dws, axis=0).reshape(kh, kw, cin_per_group, cout)


def kernel_grad_im2col(x, dy, w_shape, strides, pads, groups, precision, dy_first=False):
  kh, kw, cin_per_group, cout = w_shape
  patches = jnp.stack(_padded_taps(x, dy.shape, w_shape, strides, pads), axis=3)  # B, H', W', kh*kw, C
  return _contract(patches, dy, groups, precision, dy_first).reshape(kh, kw, cin_per_group, cout)


KERNEL_GRADS = {'shifted': kernel_grad_shifted, 'im2col': kernel_grad_im2col}
FORMS = (*KERNEL_GRADS, *(name + '_dy' for name in KERNEL_GRADS))


def kernel_grad_of(form: str):
  """The kernel-gradient function of a form name: 'shifted', 'im2col', or either with '_dy'."""
  return functools.partial(KERNEL_GRADS[form.removesuffix('_dy')], dy_first=form.endswith('_dy'))


def make_bwd(kernel_grad):
  original = conv._canonical_conv_bwd  # pylint: disable=protected-access

  def bwd(strides, pads, groups, precision, residuals, dy):
    x, w = residuals
    dx, _ = original(strides, pads, groups, precision, residuals, dy)  # XLA drops the unused transposes
    dw = kernel_grad(x, dy, w.shape, strides, pads, groups, precision).astype(w.dtype)
    return dx, dw
  return bwd


def patch(name: str):
  if name not in FORMS:
    raise SystemExit(f'error: ISSUE27_DW={name!r}; choose from {", ".join(FORMS)}')
  conv._canonical_conv.defvjp(conv._canonical_conv_fwd, make_bwd(kernel_grad_of(name)))  # pylint: disable=protected-access


def check():
  """Both forms against lax.conv_general_dilated's gradient, on the shapes tests/test_models_conv.py uses."""
  import itertools  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  cases = [(k, s, n, 1, ((k // 2,) * 2,) * 2) for k, s, n in itertools.product((3, 7), (1, 2), (8, 9))]
  cases += [(3, s, 9, 2, ((1, 1), (1, 1))) for s in (1, 2)] + [(3, 1, 8, 1, 'VALID'), (3, 2, 8, 1, ((0, 1), (1, 0)))]
  for name in FORMS:
    kernel_grad = kernel_grad_of(name)
    worst = 0.0
    for k, s, n, g, padding in cases:
      rng = np.random.default_rng(k * 100 + s * 10 + n)
      x = jnp.asarray(rng.normal(size=(2, n, n, 4)), jnp.float32)
      w = jnp.asarray(rng.normal(size=(k, k, 4 // g, 6)), jnp.float32)
      f = lambda w, x=x, s=s, padding=padding, g=g: lax.conv_general_dilated(  # noqa: E731
          x, w, (s, s), padding, dimension_numbers=conv.NHWC, feature_group_count=g)
      y, vjp = jax.vjp(f, w)
      dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
      pads = conv._pads(padding, x.shape, w.shape, (s, s))  # pylint: disable=protected-access
      got = kernel_grad(x, dy, w.shape, (s, s), tuple(map(tuple, pads)), g, None)
      ref = vjp(dy)[0]
      np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
      worst = max(worst, float(jnp.max(jnp.abs(got - ref))))
    print(f'{name}: {len(cases)} cases match lax (max abs diff {worst:.2e})')


if __name__ == '__main__':
  if '--check' in sys.argv:
    check()
    raise SystemExit(0)
  if os.environ.get('ISSUE27_DW'):
    patch(os.environ['ISSUE27_DW'])
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
  benchmark.main()
