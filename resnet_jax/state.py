"""The train state: what changes during training, its initial value, and its shapes for restoring a checkpoint.

Shared by `train` (initialises and updates it), `checkpoints` (restores it) and `convert`, so that checkpoints
need not import train.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from resnet_jax import parallel


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training. Pure pytree: jit- and Orbax-friendly."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # The exponential moving average of `variables` (config.ema), or None when the run keeps none.
  ema: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def from_variables(variables, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
  """The TrainState at step 0 holding `variables` ({'params', 'batch_stats'}), optimizer state fresh, and the
  moving average (if `ema`) starting from `variables`."""
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']))
  return with_ema(state) if ema else state


def as_tree(state: TrainState) -> dict[str, Any]:
  """The tree a checkpoint stores: the fields of `state`, `ema` only when the run keeps one (so that the
  checkpoints of runs without it, and of versions before it, have one shape)."""
  tree = {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state}
  return tree if state.ema is None else {**tree, 'ema': state.ema}


def from_tree(tree: dict[str, Any]) -> TrainState:
  return TrainState(**tree)


def with_ema(state: TrainState) -> TrainState:
  """`state` with its moving average (re)started from its current variables."""
  return state.replace(ema=jax.tree.map(jnp.copy, state.variables))


def _initializer(model, tx: optax.GradientTransformation, image_shape,
                 ema: bool) -> Callable[[jax.Array], TrainState]:
  """key -> the initial TrainState: computed by `init_train_state`, only shaped by `abstract_train_state`."""
  def init(key):
    return from_variables(model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False), tx, ema)
  return init


def init_train_state(model, tx: optax.GradientTransformation, image_shape, seed: int,
                     mesh: jax.sharding.Mesh, ema: bool = False) -> TrainState:
  """Initialises parameters directly as replicated global arrays (no host round trip)."""
  key = jax.random.fold_in(jax.random.key(seed), 0)
  # Initialisation runs once, so it is compiled without backend optimisation: optimising the per-parameter
  # random number generation costs more compile time than it could ever save at run time.
  compiled = jax.jit(_initializer(model, tx, image_shape, ema), out_shardings=parallel.replicated(mesh)).lower(
      key).compile(compiler_options={'xla_backend_optimization_level': 0})
  return compiled(key)


def abstract_train_state(model, tx: optax.GradientTransformation, image_shape, mesh: jax.sharding.Mesh,
                         ema: bool = False) -> TrainState:
  """Shapes, dtypes and shardings of the train state, without computing it (for restoring)."""
  shapes = jax.eval_shape(_initializer(model, tx, image_shape, ema), jax.random.key(0))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), shapes)
