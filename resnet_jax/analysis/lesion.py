"""Lesion study: remove residual units at test time and measure accuracy (Veit et al. 2016 §4, Figs. 3-5).

Removing unit i means its residual branch is dropped and the unit passes only its shortcut path (identity,
option-A zero padding, or projection at shape-changing units), exactly "deleting a module" in Veit et al. The
removal runs through the model's runtime `branch_gates` argument, so one compiled forward pass serves every
lesion: nothing is recompiled per unit. BatchNorm uses its running averages (train=False).

`model` is a registry ResNet (images: normalised float NHWC) or a module wrapping one as `.backbone`, such as
the `Classifier` of a loaded checkpoint (images: raw pixels, as it takes them).

    from resnet_jax.analysis import lesion
    result = lesion.single_unit_lesions(model, variables, images, labels)
    result.baseline_accuracy, result.accuracies  # accuracies[i]: unit i removed
    lesion.random_unit_lesions(model, variables, images, labels, num_removed=[1, 5, 10], num_samples=20)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.analysis._cache import per_model
from resnet_jax.errors import UserError
from resnet_jax.models import describe_units, num_residual_units
from resnet_jax.models.resnet import UnitInfo


@dataclasses.dataclass
class LesionResult:
  """Accuracy of the intact network and with each single unit removed."""
  baseline_accuracy: float
  accuracies: np.ndarray  # (num_units,): accuracy with unit i removed
  units: list[UnitInfo]  # unit i's stage, position, stride; `changes_shape` marks downsampling units

  @property
  def error_increase(self) -> np.ndarray:
    """Per-unit increase of the error (in accuracy points, fraction of 1) caused by removing the unit."""
    return self.baseline_accuracy - self.accuracies


def _check_data(images, labels):
  images = np.asarray(images) if not isinstance(images, jax.Array) else images
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise UserError(f"images must be NHWC, got shape {images.shape}")
  if labels.shape != (images.shape[0],):
    raise UserError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
  return images, labels


@per_model
def _correct_fn(model):
  def correct(variables, x, y, mask, gates):
    logits = model.apply(variables, x, train=False, branch_gates=gates)
    return jnp.sum((jnp.argmax(logits, -1) == y) * mask)
  return jax.jit(correct)


def gated_accuracies(model, variables, images, labels, gate_matrix, *, batch_size: int = 256) -> np.ndarray:
  """Accuracy for each row of `gate_matrix` (K, num_units) used as `branch_gates` (1 keep, 0 remove).

  One compiled function for all rows and batches (the last batch is padded and masked: every example counts
  once). Each batch goes to the device once and is evaluated under every gate row.
  """
  images, labels = _check_data(images, labels)
  num_units = num_residual_units(model)
  gate_matrix = np.asarray(gate_matrix, np.float32)
  if gate_matrix.ndim != 2 or gate_matrix.shape[1] != num_units:
    raise UserError(f"gate_matrix must have shape (K, {num_units}), got {gate_matrix.shape}")
  n = images.shape[0]
  if n == 0:
    raise UserError("no images to evaluate")
  batch_size = min(batch_size, n)
  fn = _correct_fn(model)
  gates = [jnp.asarray(g) for g in gate_matrix]
  counts = [[] for _ in gates]
  for start in range(0, n, batch_size):
    xb = np.asarray(images[start:start + batch_size])
    yb = labels[start:start + batch_size]
    valid = xb.shape[0]
    if valid < batch_size:  # pad to the compiled shape; padded rows are masked out
      xb = np.concatenate([xb, np.zeros((batch_size - valid,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((batch_size - valid,), yb.dtype)])
    mask = (np.arange(batch_size) < valid).astype(np.float32)
    xb, yb, mask = jax.device_put((xb, yb, mask))
    for k, g in enumerate(gates):
      counts[k].append(fn(variables, xb, yb, mask, g))
  return np.array([float(sum(np.asarray(c) for c in cs)) for cs in counts]) / n


def single_unit_lesions(model, variables, images, labels, *, batch_size: int = 256) -> LesionResult:
  """Accuracy with each residual unit removed in turn (Veit et al. 2016 Fig. 3 for CIFAR, Fig. 4 ImageNet)."""
  num_units = num_residual_units(model)
  gate_matrix = np.ones((num_units + 1, num_units), np.float32)
  gate_matrix[np.arange(1, num_units + 1), np.arange(num_units)] = 0.0
  acc = gated_accuracies(model, variables, images, labels, gate_matrix, batch_size=batch_size)
  return LesionResult(float(acc[0]), acc[1:], describe_units(model))


def random_unit_lesions(model, variables, images, labels, num_removed: Union[int, Sequence[int]], *,
                        num_samples: int = 10, seed: int = 0, exclude_downsampling: bool = False,
                        batch_size: int = 256) -> dict[int, np.ndarray]:
  """Accuracy with k units removed at random (Veit et al. 2016 Fig. 5(a): error vs. number of deleted units).

  Args:
    num_removed: k, or several k.
    num_samples: random subsets per k (drawn without replacement within a subset, with `seed`).
    exclude_downsampling: never remove units that change the shape (Veit et al. find those matter most).
  Returns:
    {k: accuracies of shape (num_samples,)}.
  """
  num_units = num_residual_units(model)
  ks = [int(num_removed)] if np.ndim(num_removed) == 0 else [int(k) for k in num_removed]
  candidates = np.array([u.index for u in describe_units(model) if not (exclude_downsampling and u.changes_shape)])
  for k in ks:
    if not 0 <= k <= len(candidates):
      raise UserError(f"cannot remove {k} units: {len(candidates)} removable units (model has {num_units})")
  if num_samples < 1:
    raise UserError("num_samples must be >= 1")
  rng = np.random.default_rng(seed)
  rows = []
  for k in ks:
    for _ in range(num_samples):
      g = np.ones((num_units,), np.float32)
      g[rng.choice(candidates, size=k, replace=False)] = 0.0
      rows.append(g)
  acc = gated_accuracies(model, variables, images, labels, np.stack(rows), batch_size=batch_size)
  return {k: acc[i * num_samples:(i + 1) * num_samples] for i, k in enumerate(ks)}


def lesion_accuracy(model, variables, images, labels, removed: Sequence[int] = (), *,
                    batch_size: int = 256) -> float:
  """Accuracy with the listed units removed (empty: the intact network)."""
  num_units = num_residual_units(model)
  g = np.ones((1, num_units), np.float32)
  bad = [u for u in removed if not 0 <= u < num_units]
  if bad:
    raise UserError(f"unit indices {bad} out of range 0..{num_units - 1}")
  g[0, list(removed)] = 0.0
  return float(gated_accuracies(model, variables, images, labels, g, batch_size=batch_size)[0])
