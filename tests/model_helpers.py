"""Helpers for tests that need variables of the right shapes fast, not trained or paper-init ones.

`model.init` draws every parameter with the JAX PRNG inside the traced forward pass, which costs seconds of XLA
compilation per model on CPU. `random_variables` traces the model once with `jax.eval_shape` (no compilation)
and fills the shapes with NumPy: conv and dense kernels ~ N(0, 2/fan_out) (He scale, so activations stay O(1)
through deep nets), BatchNorm scales ~ 1 + 0.1 N(0, 1), biases and offsets ~ 0.1 N(0, 1), running means
~ 0.1 N(0, 1) and running variances ~ 1 + 0.5 tanh(N(0, 1)) (in (0.5, 1.5)), so every parameter influences
the output.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models.counting import abstract_variables


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
