"""Residual networks as ensembles of paths (Veit et al. 2016 §5, Fig. 6).

Unrolling n residual units gives 2^n paths; a path's length is the number of residual branches it passes
through, so lengths are Binomial(n, 1/2) distributed (`path_length_distribution`, Fig. 6(a)).

`gradient_magnitude_by_path_length` estimates the gradient magnitude that reaches the input through paths of
length k (Fig. 6(b)): the forward pass runs the whole network; in the backward pass k units chosen at random
pass gradient only through their residual branch and the other n-k only through their shortcut, so the gradient
measured at the input flows along one path of length k. Multiplying by the number of paths of each length gives
the total gradient contribution per length (Fig. 6(c)); Veit et al. find it concentrated on short paths (10-34
layers of the 110-layer CIFAR net). The selection is done with the model's runtime `branch_grad_gates` /
`shortcut_grad_gates`, so one compiled gradient function serves every sample and length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.errors import UserError
from resnet_jax.evaluate import compiled_per_model
from resnet_jax.losses import cross_entropy
from resnet_jax.models import num_residual_units, residual_backbone


def path_counts(num_units: int) -> list[int]:
  """Exact number of paths of each length 0..n: C(n, k) (2^n in total)."""
  return [math.comb(num_units, length) for length in range(num_units + 1)]


def path_length_distribution(num_units: int) -> np.ndarray:
  """P(length = k) = C(n, k) / 2^n for k = 0..n (float64; exact big-integer arithmetic, any n)."""
  if num_units < 0:
    raise UserError(f"num_units must be >= 0, got {num_units}")
  total = 2 ** num_units
  return np.array([c / total for c in path_counts(num_units)], np.float64)


@dataclasses.dataclass
class PathGradientResult:
  """Gradient magnitude at the input per path length (Veit et al. 2016 Fig. 6(b)-(c))."""
  lengths: np.ndarray  # (K,) path lengths k that were measured
  mean_grad_norm: np.ndarray  # (K,) mean over samples of the per-example input-gradient L2 norm
  std_grad_norm: np.ndarray  # (K,) its standard deviation over samples
  num_samples: int
  distribution: np.ndarray  # (K,) fraction of all paths that have length k
  isolate_paths: bool

  @property
  def total_gradient(self) -> np.ndarray:
    """distribution * magnitude, normalised to sum to 1 over the measured lengths (Fig. 6(c))."""
    total = self.distribution * self.mean_grad_norm
    return total / total.sum() if total.sum() > 0 else total


@compiled_per_model
def _grad_norm_fn(model):
  def mean_input_grad_norm(variables, images, labels, branch_grad_gates, shortcut_grad_gates):
    def loss(images):
      logits = model.apply(variables, images, train=False, branch_grad_gates=branch_grad_gates,
                           shortcut_grad_gates=shortcut_grad_gates)
      return jnp.sum(cross_entropy(logits, labels))
    grad = jax.grad(loss)(images)  # train=False: examples are independent, so row i is d loss_i / d image_i
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(grad.astype(jnp.float32)), axis=(1, 2, 3))))
  return jax.jit(mean_input_grad_norm)


def gradient_magnitude_by_path_length(model, variables, images, labels, *, lengths: Optional[Sequence[int]] = None,
                                      samples_per_length: int = 10, batch_size: int = 32, seed: int = 0,
                                      isolate_paths: bool = True) -> PathGradientResult:
  """Veit et al.'s estimate of the input-gradient magnitude carried by paths of each length.

  Args:
    model, variables: a ResNet (any registry name but densenet_*), or a module wrapping one as `.backbone`
      (a checkpoint's Classifier), and its variables.
    images, labels: NHWC images as the model takes them (normalised floats for a registry model, raw pixels for
      a Classifier) and int labels; each sample uses a random batch of `batch_size` of them (Veit et al. use
      random training batches).
    lengths: path lengths k to measure (default 0..n).
    samples_per_length: measurements per k (Veit et al.: 1,000), each a fresh random unit subset and batch.
    isolate_paths: True (Veit et al.): the k chosen units pass gradient only through their residual branch,
      the others only through their shortcut: one path of length k. False: chosen units pass gradient through
      both, the others only through the shortcut (all paths within the chosen units).
  Returns:
    PathGradientResult; BatchNorm in inference mode (running averages), the gradient is that of the summed
    softmax cross-entropy, the magnitude the per-example L2 norm of d loss / d image, averaged.
  """
  num_units = num_residual_units(model)
  if residual_backbone(model).shortcut == "none":
    raise UserError("a plain network (shortcut='none') has a single path; path analysis needs shortcuts")
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if images.ndim != 4 or labels.shape != (images.shape[0],):
    raise UserError(f"need float NHWC images and matching labels, got {images.shape} and {labels.shape}")
  lengths = np.arange(num_units + 1) if lengths is None else np.asarray(lengths, int)
  if lengths.size == 0 or lengths.min() < 0 or lengths.max() > num_units:
    raise UserError(f"path lengths must be within 0..{num_units}")
  if samples_per_length < 1:
    raise UserError("samples_per_length must be >= 1")
  batch_size = min(batch_size, images.shape[0])
  grad_norm = _grad_norm_fn(model)
  rng = np.random.default_rng(seed)
  values = np.zeros((len(lengths), samples_per_length))
  pending = []
  for row, length in enumerate(lengths):
    for sample in range(samples_per_length):
      chosen = np.zeros((num_units,), np.float32)
      chosen[rng.choice(num_units, size=int(length), replace=False)] = 1.0
      shortcut = (1.0 - chosen) if isolate_paths else np.ones((num_units,), np.float32)
      batch = rng.choice(images.shape[0], size=batch_size, replace=False)
      pending.append((row, sample, grad_norm(variables, images[batch], labels[batch], chosen, shortcut)))
  for row, sample, value in pending:  # fetched after every dispatch: no host sync between samples
    values[row, sample] = float(value)
  distribution = path_length_distribution(num_units)[lengths]
  return PathGradientResult(lengths, values.mean(1), values.std(1), samples_per_length, distribution,
                            isolate_paths)
