"""The classification loss, shared by training and evaluation."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, in float32 whatever the compute dtype (bf16 losses diverge: flax#677).

  label_smoothing: Szegedy et al. 2016; 0 in the ResNet papers.
  """
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
  return optax.softmax_cross_entropy(logits, targets)
