"""Path-length analysis (Veit et al. 2016 §5): binomial path counts; gradient per path length via grad gates."""

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_variables
from resnet_jax.analysis import paths
from resnet_jax.errors import UserError
from resnet_jax.models import create_model

RS = np.random.default_rng(0)
IMAGES = RS.standard_normal((6, 8, 8, 3)).astype(np.float32)
LABELS = RS.integers(0, 10, 6)


def test_path_length_distribution_is_binomial():
  d = paths.path_length_distribution(54)  # the 110-layer CIFAR ResNet's 54 units: 2^54 paths
  assert d.shape == (55,) and d.sum() == pytest.approx(1.0)
  assert int(np.argmax(d)) == 27 and d[0] == pytest.approx(2.0 ** -54)
  assert sum(paths.path_counts(54)) == 2 ** 54
  # Veit et al. (secondary sources): "about 95%" of the 54-unit net's paths are 19 to 35 units long (exact: 98%).
  assert d[19:36].sum() > 0.95
  assert paths.path_length_distribution(1001).sum() == pytest.approx(1.0)  # big-integer exact, no overflow


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact_resnet20"])
def test_path_gradients_sum_to_the_full_gradient(name):
  # The backward pass is linear in the upstream gradient, and each unit's Jacobian is shortcut + branch, so the
  # input gradients of the 2^n single paths (branch only on the chosen units, shortcut only elsewhere) sum to
  # the full input gradient. This checks that the gates isolate exactly one path.
  model = create_model(name, stage_sizes=(1, 1, 1), stage_widths=(4, 8, 16))
  variables = random_variables(model, IMAGES.shape)
  x, y = jnp.asarray(IMAGES[:2]), jnp.asarray(LABELS[:2])

  @jax.jit
  def input_grad(bgg, sgg):
    def loss(x):
      logits = model.apply(variables, x, branch_grad_gates=bgg, shortcut_grad_gates=sgg)
      return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    return jax.grad(loss)(x)

  full = input_grad(jnp.ones(3), jnp.ones(3))
  total = jnp.zeros_like(full)
  for chosen in itertools.product([0.0, 1.0], repeat=3):
    chosen = jnp.asarray(chosen)
    total = total + input_grad(chosen, 1.0 - chosen)
  np.testing.assert_allclose(total, full, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(full))))


def test_gradient_magnitude_by_path_length(caplog):
  model = create_model("cifar_resnet20", stage_sizes=(2, 1, 1), stage_widths=(4, 8, 16))
  variables = random_variables(model, IMAGES.shape)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    result = paths.gradient_magnitude_by_path_length(model, variables, IMAGES, LABELS, samples_per_length=2,
                                                     batch_size=4, seed=0)
  compiles = [r for r in caplog.records if "Compiling" in r.getMessage()
              and "mean_input_grad_norm" in r.getMessage()]
  assert len(compiles) == 1  # one compilation for all 5 lengths x 2 samples
  assert list(result.lengths) == [0, 1, 2, 3, 4] and result.mean_grad_norm.shape == (5,)
  assert np.all(result.mean_grad_norm > 0) and np.all(np.isfinite(result.std_grad_norm))
  np.testing.assert_allclose(result.distribution, np.array([1, 4, 6, 4, 1]) / 16)
  assert result.total_gradient.sum() == pytest.approx(1.0)
  # isolate_paths=False with every unit chosen is the ordinary full gradient.
  # (4 images in batches of 4: every sample sees all of them, and the compiled function is reused.)
  full = paths.gradient_magnitude_by_path_length(model, variables, IMAGES[:4], LABELS[:4], lengths=[4],
                                                 samples_per_length=1, batch_size=4, isolate_paths=False)

  def loss(x):
    logits = model.apply(variables, x)
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(LABELS[:4])[:, None], axis=1))
  g = jax.grad(loss)(jnp.asarray(IMAGES[:4]))
  assert full.mean_grad_norm[0] == pytest.approx(float(jnp.mean(jnp.linalg.norm(g.reshape(4, -1), axis=1))),
                                                 rel=1e-4)
  with pytest.raises(UserError, match="single path"):
    paths.gradient_magnitude_by_path_length(create_model("cifar_plain20"), variables, IMAGES, LABELS)
  with pytest.raises(UserError, match="within"):
    paths.gradient_magnitude_by_path_length(model, variables, IMAGES, LABELS, lengths=[5])
