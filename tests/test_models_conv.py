"""resnet_jax.models.conv: the CPU rewrite of convolutions computes what lax.conv_general_dilated computes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')

CASES = [  # (kernel, stride, input size, groups, padding)
    *[(k, s, n, 1, 'torch') for k, s, n in itertools.product((1, 3, 7), (1, 2), (8, 9))],
    *[(k, s, 9, 2, 'torch') for k, s in itertools.product((1, 3), (1, 2))],  # grouped (ResNeXt)
    (1, 2, 8, 1, 'VALID'),       # the shortcut gate's form
    (3, 1, 8, 1, 'VALID'),
    (3, 2, 8, 1, ((0, 1), (1, 0))),  # asymmetric padding
]


def _padding(kernel, padding):
  if padding == 'torch':  # LayerFactory.conv: symmetric k // 2
    return ((kernel // 2,) * 2,) * 2
  return padding


def _loss(conv_fn, kernel, stride, padding, groups):
  def loss(x, w, dy):
    y = conv_fn(x, w, (stride, stride), padding, dimension_numbers=NHWC, feature_group_count=groups)
    return jnp.sum(y * dy)
  return loss


@pytest.mark.parametrize('kernel,stride,size,groups,padding', CASES)
def test_matches_lax_forward_and_gradients(kernel, stride, size, groups, padding):
  rng = np.random.default_rng(kernel * 100 + stride * 10 + size)
  x = jnp.asarray(rng.normal(size=(2, size, size, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 4 // groups, 6)), jnp.float32)
  padding = _padding(kernel, padding)
  y_ref = lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC,
                                   feature_group_count=groups)
  y = conv.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC,
                                feature_group_count=groups)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  dy = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
  ref = jax.grad(_loss(lax.conv_general_dilated, kernel, stride, padding, groups), (0, 1))(x, w, dy)
  got = jax.grad(_loss(conv.conv_general_dilated, kernel, stride, padding, groups), (0, 1))(x, w, dy)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_gradients_inside_a_scan_match_lax():
  """Inside a loop is where XLA:CPU's own backward convolutions are slow; the values must not change."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  ws = jnp.asarray(rng.normal(size=(3, 3, 3, 4, 4)) * 0.3, jnp.float32)

  def net(conv_fn):
    def f(x, ws):
      def unit(h, w):
        return h + jnp.tanh(conv_fn(h, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)), None
      return jnp.sum(lax.scan(unit, x, ws)[0] ** 2)
    return jax.jit(jax.grad(f, (0, 1)))

  for g, r in zip(net(conv.conv_general_dilated)(x, ws), net(lax.conv_general_dilated)(x, ws)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_pointwise_convolutions_become_matrix_products_on_cpu():
  x = jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((1, 1, 4, 6), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, (2, 2), ((0, 0), (0, 0)),
                                                                dimension_numbers=NHWC))(x, w)
  names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
  assert 'dot_general' in names and 'conv_general_dilated' not in names


def test_bfloat16_gradients_keep_their_dtypes_and_match_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.bfloat16)
  dy = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.bfloat16)
  padding = ((1, 1), (1, 1))
  ref = jax.grad(_loss(lax.conv_general_dilated, 3, 2, padding, 1), (0, 1))(x, w, dy)
  got = jax.grad(_loss(conv.conv_general_dilated, 3, 2, padding, 1), (0, 1))(x, w, dy)
  for g, r in zip(got, ref):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(g), np.float32(r), rtol=0.05, atol=0.25)
