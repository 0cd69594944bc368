"""Helpers for tests and benchmarks that need variables of the right shapes fast, not trained or paper-init ones.

`model.init` draws every parameter with the JAX PRNG inside the traced forward pass, which costs seconds of XLA
compilation per model on CPU. `random_variables` traces the model once with `jax.eval_shape` (no compilation)
and fills the shapes with NumPy: conv and dense kernels ~ N(0, 2/fan_out) (He scale, so activations stay O(1)
through deep nets), BatchNorm scales ~ 1 + 0.1 N(0, 1), biases and offsets ~ 0.1 N(0, 1), running means
~ 0.1 N(0, 1) and running variances ~ 1 + 0.5 tanh(N(0, 1)) (in (0.5, 1.5)), so every parameter influences
the output.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def abstract_variables(model, input_shape: Sequence[int], dtype=jnp.float32):
  """Shapes and dtypes of `model.init(key, x, train=False)` without running it."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def fill_variables(shapes, seed: int = 0):
  """NumPy-filled variables for a tree of ShapeDtypeStructs (see the module docstring for the distributions).

  Values are windows, at random offsets, of one pool of 2^20 standard normals: filling ResNeXt-101's 88M
  parameters costs memory bandwidth, not 88M random draws.
  """
  rs = np.random.default_rng(seed)
  pool = rs.standard_normal(1 << 20, dtype=np.float32)

  def normal(shape):
    size = math.prod(shape)
    start = int(rs.integers(0, pool.size))
    reps = -(-(start + size) // pool.size)
    return (np.tile(pool, reps)[start:start + size] if reps > 1 else pool[start:start + size]).reshape(shape)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    collection = str(getattr(path[0], "key", path[0]))
    shape = leaf.shape
    if collection == "batch_stats":
      v = 1.0 + 0.5 * np.tanh(normal(shape)) if name == "var" else 0.1 * normal(shape)
    elif name == "kernel":
      fan_out = math.prod(shape[:-2]) * shape[-1] if len(shape) > 2 else shape[-1]
      v = normal(shape) * np.float32(math.sqrt(2.0 / fan_out))
    elif name == "scale":
      v = 1.0 + 0.1 * normal(shape)
    else:
      v = 0.1 * normal(shape)
    return jnp.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_variables(model, input_shape: Sequence[int], seed: int = 0, dtype=jnp.float32):
  """`fill_variables(abstract_variables(model, input_shape))`."""
  return fill_variables(abstract_variables(model, input_shape, dtype), seed)


def two_pass_statistics(xg, shift, axes):
  """Mean and biased variance as E[x] and E[(x - E[x])^2] (two passes over x), float32; `shift` is unused (the
  signature of `layers._bn_statistics`, whose one-pass arithmetic this is the textbook form of)."""
  del shift
  xf = xg.astype(jnp.float32)
  mean = jnp.mean(xf, axis=axes, keepdims=True)
  return mean, jnp.mean(jnp.square(xf - mean), axis=axes, keepdims=True)


def batch_norm_train_reference(x, scale, bias, shift, group, epsilon, relu, dtype):
  """`layers.batch_norm_train` written plainly (two-pass statistics, gradient by autodiff): the oracle its
  hand-written gradient is tested against, and the "before" of its benchmark (benchmarks/experiments)."""
  xg = x.reshape((x.shape[0] // group, group) + x.shape[1:]).astype(jnp.float32)
  axes = tuple(range(1, xg.ndim - 1))
  mean, var = two_pass_statistics(xg, shift, axes)
  y = (xg - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias
  if relu:
    y = jax.nn.relu(y)
  features = x.shape[-1]
  return y.astype(dtype).reshape(x.shape), mean.reshape(-1, features), var.reshape(-1, features)
