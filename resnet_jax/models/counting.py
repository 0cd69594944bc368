"""Parameter and multiply-add counts, computed without running the model.

`count_params` traces `model.init` with `jax.eval_shape` (no FLOPs, no memory for the weights).
`count_macs` traces the forward pass to a jaxpr and sums the multiply-adds of every convolution and matrix
product in it (sub-jaxprs included: scan bodies count `length` times, `cond` counts its largest branch). That is
the convention of torchvision's `_ops` / fvcore ("GFLOPS" that are really GMACs): BatchNorm, activations,
pooling and additions are not counted.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp


def abstract_variables(model, input_shape: Sequence[int], dtype=jnp.float32):
  """Shapes and dtypes of `model.init(key, x, train=False)` without running it (no FLOPs, no weights)."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)


def count_params(model, input_shape: Sequence[int] = (1, 32, 32, 3), dtype=jnp.float32) -> int:
  """Trainable parameters (the 'params' collection; BatchNorm running statistics excluded).

  The count does not depend on the spatial size for the zoo's models (global average pooling), so a small
  `input_shape` is enough; the channel count must be the one the model will see.
  """
  variables = abstract_variables(model, input_shape, dtype)
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables.get("params", {}))))


def count_macs(model, input_shape: Sequence[int] = (1, 224, 224, 3), dtype=jnp.float32) -> int:
  """Multiply-adds of one forward pass (train=False) on an input of `input_shape` (NHWC, batch included)."""
  variables = abstract_variables(model, input_shape, dtype)
  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return jaxpr_macs(closed.jaxpr)


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):  # Jaxpr
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def jaxpr_macs(jaxpr, loop_trips: bool = True) -> int:
  """Multiply-adds of convolutions and dot products in a jaxpr, recursing into sub-jaxprs.

  loop_trips=True counts a scan body `length` times (the work done); loop_trips=False counts every loop body
  once, as XLA's HloCostAnalysis does (the benchmark compares the two to tell whether XLA's FLOP count missed
  loop trips). A `while` body counts once either way (its trip count is not static; the models have none,
  the input pipeline's index permutation has one without convolutions). `cond` counts its largest branch.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out_feature, in_feature, *spatial)
      per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
      total += math.prod(out) * per_output // max(1, eqn.params.get("batch_group_count", 1))
    elif name == "dot_general":
      lhs = eqn.invars[0].aval.shape
      rhs = eqn.invars[1].aval.shape
      (_, rc), (_, rb) = eqn.params["dimension_numbers"]
      total += math.prod(lhs) * math.prod(rhs[d] for d in range(len(rhs)) if d not in rc and d not in rb)
    elif name == "cond":
      total += max((jaxpr_macs(j, loop_trips) for j in _sub_jaxprs(eqn.params["branches"])), default=0)
    else:
      inner = sum(jaxpr_macs(j, loop_trips) for v in eqn.params.values() for j in _sub_jaxprs(v))
      total += inner * (eqn.params["length"] if name == "scan" and loop_trips else 1)
  return total
