"""Propagation of the gradient across depth (He et al. 2016 §2-3, Eq. 5).

With identity shortcuts and after-addition identities, x_L = x_l + sum_i F(x_i) and
d loss / d x_l = d loss / d x_L (1 + d/dx_l sum_i F): the gradient of any deeper unit reaches every shallower
unit directly, so its magnitude stays of the same order across depth; scaled, gated or 1x1-conv shortcuts
(Table 1) multiply it along the way, and a plain network has only the product term. `gradient_by_unit`
measures || d loss / d x_l || at the input of every residual unit l of a model (a checkpoint, or a freshly
initialised network), to plot against depth.

The unit inputs are perturbed through Flax's method interception (`nn.intercept_methods`): each
`ResidualUnit.__call__` receives x_l + delta_l with delta_l = 0, and the gradient with respect to delta_l is
d loss / d x_l; the forward pass is unchanged and no model code needs a hook.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import storage
from resnet_jax.errors import UserError
from resnet_jax.evaluate import compiled_per_model
from resnet_jax.losses import cross_entropy
from resnet_jax.models import residual_backbone
from resnet_jax.models import units as units_lib


@dataclasses.dataclass
class PropagationResult:
  """Mean over examples of the per-example L2 norm of d loss_i / d x_l, per residual unit l (in call order)."""
  grad_norm: np.ndarray          # (num_units,)
  stages: list[int]              # stage (1-based) of each unit
  positions: list[int]           # position within its stage (1-based)
  num_examples: int

  @property
  def relative_to_last(self) -> np.ndarray:
    """grad_norm / the deepest unit's: He et al. 2016 Eq. 5 compares every x_l with x_L."""
    return self.grad_norm / self.grad_norm[-1] if self.grad_norm[-1] > 0 else self.grad_norm


def _is_unit_call(context) -> bool:
  return isinstance(context.module, units_lib.ResidualUnit) and context.method_name == '__call__'


@compiled_per_model
def _unit_grad_norms_fn(model):
  def unit_grad_norms(variables, images, labels):
    shapes = []

    def capture(next_fun, args, kwargs, context):
      if _is_unit_call(context):
        shapes.append(jax.ShapeDtypeStruct(args[0].shape, jnp.float32))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
      jax.eval_shape(lambda: model.apply(variables, images, train=False))
    deltas = [jnp.zeros(s.shape, s.dtype) for s in shapes]

    def loss(deltas):
      position = [0]

      def perturb(next_fun, args, kwargs, context):
        if _is_unit_call(context):
          x = args[0]
          args = (x + deltas[position[0]].astype(x.dtype),) + tuple(args[1:])
          position[0] += 1
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(perturb):
        logits = model.apply(variables, images, train=False)
      # Summed: with train=False examples are independent, so row i of each gradient is d loss_i / d x_l[i].
      return jnp.sum(cross_entropy(logits, labels))

    grads = jax.grad(loss)(deltas)
    return jnp.stack([jnp.sum(jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))) for g in grads])
  return jax.jit(unit_grad_norms)


def gradient_by_unit(model, variables, images, labels, *, batch_size: int = 50) -> PropagationResult:
  """|| d loss / d x_l || at the input of every residual unit, averaged over `images`.

  Args:
    model, variables: a ResNet (any registry name but densenet_*) or a module wrapping one as `.backbone` (a
      checkpoint's Classifier), and its variables; BatchNorm in inference mode.
    images, labels: NHWC images as `model` takes them and int labels; processed in batches of `batch_size`.
  """
  backbone = residual_backbone(model)
  if getattr(backbone, 'scan_units', False) or getattr(backbone, 'remat', False):
    raise UserError("the propagation analysis perturbs every unit's input separately: build the model with "
                    "scan_units=False and remat=False (same variables for remat; scan stacks them)")
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4 or labels.shape != (images.shape[0],) or not len(labels):
    raise UserError(f"need NHWC images and matching labels, got {images.shape} and {labels.shape}")
  fn = _unit_grad_norms_fn(model)
  totals = None
  for start in range(0, len(labels), batch_size):
    sums = fn(variables, images[start:start + batch_size], labels[start:start + batch_size])
    totals = sums if totals is None else totals + sums
  infos = backbone.describe_units()
  norms = np.asarray(totals, np.float64) / len(labels)
  if len(norms) != len(infos):
    raise UserError(f"found {len(norms)} residual unit calls, expected {len(infos)}")
  return PropagationResult(norms, [u.stage for u in infos], [u.position for u in infos], int(len(labels)))


def to_json(result: PropagationResult) -> dict:
  return {'num_examples': result.num_examples,
          'units': [{'index': i, 'stage': stage, 'position': position, 'grad_norm': float(norm),
                     'relative_to_last': float(rel)}
                    for i, (stage, position, norm, rel) in enumerate(zip(
                        result.stages, result.positions, result.grad_norm, result.relative_to_last))]}


def plot(curves: dict[str, dict], path: str) -> None:
  """|| d loss / d x_l || against unit l (log scale), one line per labelled result (`to_json` dicts); dotted
  vertical lines at stage boundaries."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  for label, result in curves.items():
    units = result['units']
    ax.plot([u['index'] + 1 for u in units], [u['grad_norm'] for u in units], marker='.', label=label)
    for prev, unit in zip(units, units[1:]):
      if unit['stage'] != prev['stage']:
        ax.axvline(unit['index'] + 0.5, color='gray', linestyle=':', linewidth=0.8)
  ax.set_xlabel('residual unit l (input x_l; 1 = shallowest)')
  ax.set_ylabel('mean || d loss / d x_l ||')
  ax.set_yscale('log')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=110)
