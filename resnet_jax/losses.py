"""The classification losses, shared by training and evaluation: softmax cross-entropy (the ResNet papers) and
the sigmoid binary cross-entropy of "ResNet strikes back" (Wightman et al. 2021), on probability targets so
that label smoothing (and mixed targets) are one input to either."""

import jax
import jax.numpy as jnp
import optax

from resnet_jax.errors import UserError

#: config.loss: the training loss. Evaluation reports the softmax cross-entropy (test_loss) for every run, as
#: timm's and torchvision's validation do.
LOSSES = ('softmax', 'bce')


def check_loss(loss: str, bce_target_threshold: float | None) -> None:
  """Refuses config.loss / config.bce_target_threshold values that name no loss or cannot have been meant."""
  if loss not in LOSSES:
    raise UserError(f"unknown config.loss {loss!r}; choose {' or '.join(LOSSES)}")
  if bce_target_threshold is not None and loss != 'bce':
    raise UserError(f"config.bce_target_threshold={bce_target_threshold} applies to config.loss=bce only (the "
                    f"loss is {loss}); drop it or set --config.loss=bce")
  if bce_target_threshold is not None and not 0.0 <= bce_target_threshold < 1.0:
    raise UserError(f"config.bce_target_threshold={bce_target_threshold} is out of range: it must be in [0, 1) "
                    "(targets above it become 1; 0.2 in ResNet strikes back)")


def one_hot_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """Probability targets: one-hot, or smoothed (Szegedy et al. 2016; 0 in the ResNet papers) to
  1 - eps + eps/C on the label and eps/C elsewhere (timm's mixup_target, torchvision's label_smoothing)."""
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return targets


def classification_loss(logits: jax.Array, targets: jax.Array, loss: str = 'softmax',
                        bce_target_threshold: float | None = None) -> jax.Array:
  """Per-example loss in float32 whatever the compute dtype (bf16 losses diverge: flax#677).

  'softmax': cross-entropy of softmax(logits) against `targets`.
  'bce': the mean over classes of the sigmoid binary cross-entropy (RSB; timm's BinaryCrossEntropy, whose
  mean over batch x classes is the batch mean of this); `bce_target_threshold` first turns targets above it
  into 1 and the rest into 0 (timm's --bce-target-thresh: 0.2 in the RSB configs binarises smoothed targets).
  """
  logits = logits.astype(jnp.float32)
  if loss == 'softmax':
    return optax.softmax_cross_entropy(logits, targets)
  if bce_target_threshold is not None:
    targets = (targets > bce_target_threshold).astype(jnp.float32)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy of integer labels (the evaluation's test_loss)."""
  return classification_loss(logits, one_hot_targets(labels, logits.shape[-1], label_smoothing))
