"""The training losses against NumPy re-statements on a fixed batch, and their config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import losses
from resnet_jax.errors import UserError

LOGITS = np.array([[2.0, -1.0, 0.5, 0.0], [-3.0, 4.0, 1.0, -0.5], [0.1, 0.2, -0.3, 7.0]], np.float32)
LABELS = np.array([0, 1, 3])


def numpy_bce(logits, targets):
  """Binary cross-entropy of sigmoid(logits), averaged over classes, and its gradient (sigmoid - t) / C."""
  probabilities = 1 / (1 + np.exp(-logits.astype(np.float64)))
  value = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities)).mean(-1)
  return value, (probabilities - targets) / logits.shape[-1]


@pytest.mark.parametrize('smoothing, threshold', [(0.0, None), (0.1, None), (0.1, 0.2)])
def test_bce_value_and_gradient(smoothing, threshold):
  targets = np.full((3, 4), smoothing / 4) + np.eye(4)[LABELS] * (1 - smoothing)
  numpy_targets = (targets > threshold).astype(np.float64) if threshold is not None else targets
  expected, expected_grad = numpy_bce(LOGITS, numpy_targets)
  jax_targets = losses.one_hot_targets(jnp.asarray(LABELS), 4, smoothing)
  np.testing.assert_allclose(jax_targets, targets, rtol=1e-6)
  loss = lambda logits: losses.classification_loss(logits, jax_targets, 'bce', threshold)
  np.testing.assert_allclose(loss(LOGITS), expected, rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda logits: loss(logits).sum())(LOGITS), expected_grad, rtol=1e-5,
                             atol=1e-7)


def test_softmax_loss_is_the_cross_entropy_of_smoothed_targets():
  targets = np.full((3, 4), 0.1 / 4) + np.eye(4)[LABELS] * 0.9
  shifted = LOGITS.astype(np.float64) - LOGITS.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), 0.1),
                             -(targets * log_softmax).sum(-1), rtol=1e-5)


@pytest.mark.parametrize('loss, threshold, message', [
    ('focal', None, "unknown config.loss 'focal'; choose softmax or bce"),
    ('softmax', 0.2, 'applies to config.loss=bce only'),
    ('bce', 1.5, 'must be in \\[0, 1\\)'),
])
def test_loss_options_nobody_meant_are_refused(loss, threshold, message):
  with pytest.raises(UserError, match=message):
    losses.check_loss(loss, threshold)
