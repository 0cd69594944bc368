"""Lesion study (Veit et al. 2016 §4): units removed at test time through runtime gates, one compilation."""

import logging

import jax
import numpy as np
import pytest

from model_helpers import random_variables
from resnet_jax.analysis import lesion
from resnet_jax.errors import UserError
from resnet_jax.models import create_model

MODEL = create_model("cifar_resnet20", stage_sizes=(2, 1, 1), stage_widths=(4, 8, 16))
RS = np.random.default_rng(0)
IMAGES = RS.standard_normal((10, 8, 8, 3)).astype(np.float32)
LABELS = RS.integers(0, 10, 10)


@pytest.fixture(scope="module")
def variables():
  # Running statistics = the batch statistics of IMAGES (one training call with momentum 0), so eval-mode
  # logits are O(1) and the predictions depend on every unit.
  v = random_variables(MODEL, IMAGES.shape)
  _, updates = MODEL.clone(bn_momentum=0.0).apply(v, IMAGES, train=True, mutable=["batch_stats"])
  return {"params": v["params"], **updates}


def accuracy(variables, gates=None):
  logits = MODEL.apply(variables, IMAGES, branch_gates=gates)
  return float(np.mean(np.argmax(logits, -1) == LABELS))


def test_single_unit_lesions_match_direct_evaluation_and_compile_once(variables, caplog):
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    result = lesion.single_unit_lesions(MODEL, variables, IMAGES, LABELS, batch_size=4)  # 3 batches, padded
  compiles = [r for r in caplog.records if "Compiling" in r.getMessage() and "correct" in r.getMessage()]
  assert len(compiles) == 1
  assert result.accuracies.shape == (4,) and len(result.units) == 4
  assert result.baseline_accuracy == pytest.approx(accuracy(variables))
  for i in range(4):
    gates = np.ones(4, np.float32)
    gates[i] = 0
    assert result.accuracies[i] == pytest.approx(accuracy(variables, gates))
  assert [u.changes_shape for u in result.units] == [False, False, True, True]
  np.testing.assert_allclose(result.error_increase, result.baseline_accuracy - result.accuracies)


def test_all_gates_one_is_the_intact_network(variables):
  assert lesion.lesion_accuracy(MODEL, variables, IMAGES, LABELS) == pytest.approx(accuracy(variables))
  assert lesion.lesion_accuracy(MODEL, variables, IMAGES, LABELS, removed=[1, 2]) == pytest.approx(
      accuracy(variables, np.array([1, 0, 0, 1], np.float32)))


def test_random_lesions(variables):
  out = lesion.random_unit_lesions(MODEL, variables, IMAGES, LABELS, num_removed=[0, 1, 4], num_samples=3, seed=1)
  assert sorted(out) == [0, 1, 4] and all(v.shape == (3,) for v in out.values())
  np.testing.assert_allclose(out[0], accuracy(variables))
  np.testing.assert_allclose(out[4], accuracy(variables, np.zeros(4, np.float32)))
  again = lesion.random_unit_lesions(MODEL, variables, IMAGES, LABELS, num_removed=[0, 1, 4], num_samples=3, seed=1)
  np.testing.assert_array_equal(out[1], again[1])
  kept = lesion.random_unit_lesions(MODEL, variables, IMAGES, LABELS, 2, num_samples=2, exclude_downsampling=True)
  np.testing.assert_allclose(kept[2], accuracy(variables, np.array([0, 0, 1, 1], np.float32)))
  with pytest.raises(UserError, match="removable"):
    lesion.random_unit_lesions(MODEL, variables, IMAGES, LABELS, 3, exclude_downsampling=True)


def test_lesion_errors():
  with pytest.raises(UserError, match="residual units"):
    lesion.single_unit_lesions(create_model("densenet_bc_100_12"), {}, IMAGES, LABELS)
  with pytest.raises(UserError, match="labels"):
    lesion.single_unit_lesions(MODEL, {}, IMAGES, LABELS[:3])
  with pytest.raises(UserError, match="out of range"):
    lesion.lesion_accuracy(MODEL, {}, IMAGES, LABELS, removed=[9])


def test_lesions_of_a_checkpoint_classifier(variables):
  # A loaded checkpoint's model is a Classifier (normalisation + backbone); it passes branch_gates through.
  from resnet_jax.classifier import Classifier
  wrapped = Classifier(backbone=MODEL, mean=(0.5, 0.5, 0.5), std=(2.0, 2.0, 2.0))
  wrapped_vars = {"params": {"backbone": variables["params"]}, "batch_stats": {"backbone": variables["batch_stats"]}}
  raw = IMAGES * 2.0 + 0.5  # what the Classifier normalises back to IMAGES
  result = lesion.single_unit_lesions(wrapped, wrapped_vars, raw, LABELS)
  direct = lesion.single_unit_lesions(MODEL, variables, IMAGES, LABELS)
  assert result.baseline_accuracy == pytest.approx(direct.baseline_accuracy)
  np.testing.assert_allclose(result.accuracies, direct.accuracies)
