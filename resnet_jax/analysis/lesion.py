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

from resnet_jax.errors import UserError
from resnet_jax.evaluate import compiled_per_model
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


@compiled_per_model
def _correct_fn(model):
  def correct(variables, images, labels, mask, gates):
    logits = model.apply(variables, images, train=False, branch_gates=gates)
    return jnp.sum((jnp.argmax(logits, -1) == labels) * mask)
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
  num_images = images.shape[0]
  if num_images == 0:
    raise UserError("no images to evaluate")
  batch_size = min(batch_size, num_images)
  count_correct = _correct_fn(model)
  gate_rows = [jnp.asarray(row) for row in gate_matrix]
  counts = [[] for _ in gate_rows]
  for start in range(0, num_images, batch_size):
    batch_images = np.asarray(images[start:start + batch_size])
    batch_labels = labels[start:start + batch_size]
    valid = batch_images.shape[0]
    if valid < batch_size:  # pad to the compiled shape; padded rows are masked out
      batch_images = np.concatenate([batch_images, np.zeros((batch_size - valid,) + batch_images.shape[1:],
                                                            batch_images.dtype)])
      batch_labels = np.concatenate([batch_labels, np.zeros((batch_size - valid,), batch_labels.dtype)])
    mask = (np.arange(batch_size) < valid).astype(np.float32)
    batch_images, batch_labels, mask = jax.device_put((batch_images, batch_labels, mask))
    for row, gates in enumerate(gate_rows):
      counts[row].append(count_correct(variables, batch_images, batch_labels, mask, gates))
  return np.array([float(sum(np.asarray(count) for count in row_counts)) for row_counts in counts]) / num_images


def single_unit_lesions(model, variables, images, labels, *, batch_size: int = 256) -> LesionResult:
  """Accuracy with each residual unit removed in turn (Veit et al. 2016 Fig. 3 for CIFAR, Fig. 4 ImageNet)."""
  num_units = num_residual_units(model)
  gate_matrix = np.ones((num_units + 1, num_units), np.float32)
  gate_matrix[np.arange(1, num_units + 1), np.arange(num_units)] = 0.0
  accuracies = gated_accuracies(model, variables, images, labels, gate_matrix, batch_size=batch_size)
  return LesionResult(float(accuracies[0]), accuracies[1:], describe_units(model))


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
  removed_counts = [int(num_removed)] if np.ndim(num_removed) == 0 else [int(count) for count in num_removed]
  candidates = np.array([unit.index for unit in describe_units(model)
                         if not (exclude_downsampling and unit.changes_shape)])
  for count in removed_counts:
    if not 0 <= count <= len(candidates):
      raise UserError(f"cannot remove {count} units: {len(candidates)} removable units (model has {num_units})")
  if num_samples < 1:
    raise UserError("num_samples must be >= 1")
  rng = np.random.default_rng(seed)
  rows = []
  for count in removed_counts:
    for _ in range(num_samples):
      gates = np.ones((num_units,), np.float32)
      gates[rng.choice(candidates, size=count, replace=False)] = 0.0
      rows.append(gates)
  accuracies = gated_accuracies(model, variables, images, labels, np.stack(rows), batch_size=batch_size)
  return {count: accuracies[index * num_samples:(index + 1) * num_samples]
          for index, count in enumerate(removed_counts)}


def lesion_accuracy(model, variables, images, labels, removed: Sequence[int] = (), *,
                    batch_size: int = 256) -> float:
  """Accuracy with the listed units removed (empty: the intact network)."""
  num_units = num_residual_units(model)
  gates = np.ones((1, num_units), np.float32)
  bad = [unit for unit in removed if not 0 <= unit < num_units]
  if bad:
    raise UserError(f"unit indices {bad} out of range 0..{num_units - 1}")
  gates[0, list(removed)] = 0.0
  return float(gated_accuracies(model, variables, images, labels, gates, batch_size=batch_size)[0])
