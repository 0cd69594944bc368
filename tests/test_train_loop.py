"""The training loop's shape and its checkpoint choice (the loop's behaviour is asserted by test_train,
test_preemption and test_reliability on real runs)."""

import ast
import os
import types

import jax.numpy as jnp
import ml_collections
import pytest

from resnet_jax import state as state_lib
from resnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_functions_read_in_one_screen():
  """Issue 21: the loop reads top to bottom; no function of train.py is longer than 70 lines."""
  tree = ast.parse(open(os.path.join(REPO, 'resnet_jax', 'train.py')).read())
  lengths = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
  assert max(lengths.values()) <= 70, sorted(lengths.items(), key=lambda item: -item[1])[:3]
  assert lengths['_train_loop'] <= 60


@pytest.mark.parametrize('metric, kept', [('test_accuracy', [2, 4]), ('test_loss', [3, 4]), ('test_error', [3, 4])])
def test_best_checkpoint_follows_the_metric_direction(tmp_path, metric, kept):
  """The best checkpoint is the highest accuracy, or the lowest loss or error (config.best_metric alone says
  which; there is no separate direction to get wrong)."""
  config = ml_collections.ConfigDict({'keep_checkpoints': 1, 'best_metric': metric})
  experiment = types.SimpleNamespace(config=config, checkpoint_meta=lambda: {'model': {}})
  results = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.4}  # accuracy, loss and error alike: step 2 highest, step 3 lowest
  with train._checkpointer(experiment, str(tmp_path), 0) as saver:  # pylint: disable=protected-access
    for step, value in results.items():
      weights = {'weights': jnp.full((2,), step, jnp.float32)}
      saver.save(step, state_lib.TrainState(step=jnp.int32(step), params=weights, batch_stats={}, opt_state=()),
                 {metric: value})
    saver.wait()
    assert sorted(saver.checkpointer.all_steps()) == kept
