"""The end-to-end path in-process on 2 fake devices: train -> evaluate -> checkpoint -> metrics -> resume -> load."""

import gc
import json
import os
from typing import Any
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import parallel
from resnet_jax import state as state_lib
from resnet_jax import train
from resnet_jax.data import sources
from resnet_jax.errors import UserError

from conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, 'tests', 'golden', 'quickstart_tiny_metrics.json')
#: metrics.jsonl fields that depend on the wall clock.
TIMING_FIELDS = ('images_per_sec', 'compile_s')


def read_lines(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]


def test_workdir_layout_and_metrics(trained_run):
  workdir, result = trained_run
  names = set(os.listdir(workdir))
  assert {'config.json', 'metrics.jsonl', 'curves.png', 'checkpoints'} <= names
  assert any(n.startswith('events.out.tfevents') for n in names)
  lines = read_lines(workdir)
  train_lines = [l for l in lines if 'train_loss' in l]
  eval_lines = [l for l in lines if 'test_accuracy' in l]
  assert [l['step'] for l in train_lines] == [4, 8, 12]
  for line in train_lines:
    assert {'train_loss', 'learning_rate', 'images_per_sec'} <= set(line) and np.isfinite(line['train_loss'])
  assert [l['learning_rate'] for l in train_lines] == pytest.approx([0.1, 0.1, 0.01])
  assert [l['step'] for l in eval_lines] == [12]
  assert 0.0 <= eval_lines[0]['test_accuracy'] <= 1.0 and eval_lines[0]['num_examples'] == 364
  assert result['test_accuracy'] == eval_lines[0]['test_accuracy']
  assert sorted(checkpoints.Checkpointer(workdir, read_only=True).all_steps()) == [6, 12]
  saved = config_lib.from_json(open(os.path.join(workdir, 'config.json')).read())
  assert saved.total_steps == 12 and saved.model.name == 'cifar_preact_resnet20'


def test_tiny_quickstart_metrics_equal_the_golden_of_the_base_commit(trained):
  """Issue 21's acceptance: losses and accuracies of the tiny quickstart bitwise as at 7c00b76 (refactoring the
  input path or the loop must not change what is trained). Timing fields and timing-only lines are left out."""
  lines = [{k: v for k, v in line.items() if k not in TIMING_FIELDS} for line in read_lines(trained)]
  with open(GOLDEN) as file:
    golden = json.load(file)
  assert [line for line in lines if set(line) != {'step'}] == golden['lines']


def final_accuracy(workdir):
  return [l for l in read_lines(workdir) if 'test_accuracy' in l][-1]['test_accuracy']


def test_rerun_resumes_and_does_not_retrain(run_copy):
  workdir = run_copy
  before = open(os.path.join(workdir, 'metrics.jsonl')).read()
  again = train.train_and_evaluate(tiny_config(), workdir)
  assert again['test_accuracy'] == final_accuracy(workdir)
  after = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in after if 'train_loss' in l] == [4, 8, 12]  # nothing retrained
  assert len(after) >= len(before.splitlines())


def test_load_and_predict_reproduce_the_final_evaluation(trained):
  workdir = trained
  loaded = checkpoints.load(workdir)
  assert loaded.step == 12 and loaded.config.model.name == 'cifar_preact_resnet20'
  test = sources.open_split('digits', 'test').read_all()
  logits = evaluate.predict(loaded.model, loaded.variables, test['image'], batch_size=100)
  assert logits.shape == (364, 10) and logits.dtype == np.float32
  accuracy = float(np.mean(np.argmax(logits, -1) == test['label']))
  assert accuracy == pytest.approx(final_accuracy(workdir), abs=1e-9)


def test_eval_mode_reports_the_final_accuracy(run_copy):
  workdir = run_copy
  evaluated = evaluate.evaluate_checkpoint(workdir)
  assert evaluated['step'] == 12
  assert evaluated['test_accuracy'] == pytest.approx(final_accuracy(workdir), abs=1e-9)
  record = json.loads(open(os.path.join(workdir, 'eval_results.jsonl')).read().splitlines()[-1])
  assert record['test_accuracy'] == evaluated['test_accuracy']


def test_resumed_run_equals_uninterrupted_run(trained, tmp_path):
  """6 steps, stop, then resume to 12, gives the parameters of 12 steps in one go (bitwise on CPU)."""
  straight = trained
  split = str(tmp_path / 'split')
  train.train_and_evaluate(tiny_config(total_steps='6', eval_every_steps='6'), split)
  train.train_and_evaluate(tiny_config(), split)
  a, b = checkpoints.load(straight), checkpoints.load(split)
  np.testing.assert_array_equal(_flat(a.variables), _flat(b.variables))


def test_workdir_of_another_run_is_refused(trained):
  workdir = trained
  with pytest.raises(UserError, match='holds a run with a different config.model'):
    train.train_and_evaluate(tiny_config(**{'model.name': 'cifar_preact_resnet32'}), workdir)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _flat(tree):
  return np.concatenate([np.ravel(v).astype(np.float64) for v in _leaves(tree)])


@pytest.mark.parametrize('overrides,message', [
    ({'batch_norm.mode': 'sync'}, "unknown config.batch_norm.mode 'sync'"),
    ({'batch_norm.mode': 'ghost'}, 'needs config.batch_norm.group_size'),
    ({'batch_norm.mode': 'ghost', 'batch_norm.group_size': '6'},
     'group_size=6 does not divide the per-device batch 16 .batch_size 32 over 2 devices'),
    ({'on_nonfinite': 'ignore'}, "unknown config.on_nonfinite 'ignore'"),
    ({'optimizer.name': 'adam'}, "unknown optimizer 'adam'; choose one of sgd, lamb, lars, adamw"),
    ({'schedule.warmup_steps': '20', 'schedule.warmup': 'constant'}, 'warm-up of 20 steps is not shorter'),
    ({'batch_size': '31'}, 'batch_size=31 is not divisible by the 2 devices'),
    ({'model.name': 'resnet_9000'}, "unknown model name 'resnet_9000'"),
    ({'model.unit_order': 'sideways'}, 'sideways'),
])
def test_bad_config_is_one_clear_error_before_compiling(overrides, message):
  with pytest.raises(UserError, match=message):
    train.build_experiment(tiny_config(**overrides), parallel.make_mesh())


def test_several_steps_per_dispatch_compile_two_programs_and_match_one_step(trained, tmp_path):
  """steps_per_dispatch=4, logs every 5 and checkpoints every 6 steps: stretches of 4, 1, 1, 4, 2 steps run as
  two compiled programs (4 steps, 1 step), not one per stretch length, with the parameters of one step per
  dispatch."""
  workdir = str(tmp_path / 'k4')
  train.train_and_evaluate(tiny_config(steps_per_dispatch='4', log_every_steps='5'), workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert len([l for l in lines if 'compile_s' in l]) == 2
  assert [l['step'] for l in lines if 'train_loss' in l] == [5, 10, 12]
  a, b = checkpoints.load(trained), checkpoints.load(workdir)
  np.testing.assert_allclose(_flat(a.variables), _flat(b.variables), rtol=1e-4, atol=1e-5)


def test_step_dispatcher_reports_each_compile_with_the_step_it_happened_at():
  """The compile record names the step passed in, not a variable of the loop read through a closure."""
  mesh = parallel.make_mesh()
  experiment = train.build_experiment(tiny_config(steps_per_dispatch='2'), mesh)
  compiles = []
  dispatcher = train.StepDispatcher(experiment, lambda seconds, num_steps, step: compiles.append((num_steps, step)),
                                    steps_per_dispatch=2)
  state = state_lib.init_train_state(experiment.model, experiment.tx, experiment.image_shape, 0, mesh)
  totals = jax.device_put(train.zero_accumulator(), parallel.replicated(mesh))
  state, totals = dispatcher.advance(state, totals, step=0, num_steps=2)
  state, totals = dispatcher.advance(state, totals, step=2, num_steps=2)
  assert compiles == [(2, 0)] and int(state.step) == 4


def test_load_closes_its_checkpoint_manager_when_restoring_fails(trained, monkeypatch):
  workdir = trained
  closed = []
  close = checkpoints.Checkpointer.close
  monkeypatch.setattr(checkpoints.Checkpointer, 'close', lambda self: closed.append(close(self)))
  with pytest.raises(UserError, match='has no checkpoint for step 7'):
    checkpoints.load(workdir, step=7)
  assert len(closed) == 1

  def broken_restore(self, step, abstract_state):
    raise OSError('disk gone')
  monkeypatch.setattr(checkpoints.Checkpointer, 'restore', broken_restore)
  with pytest.raises(UserError, match='can be restored .*disk gone'):  # no step restores: one error naming why
    checkpoints.load(workdir)
  assert len(closed) == 2


class _Scale(nn.Module):
  """Flattened pixels times `factor`: a model without parameters whose output shows which model ran."""
  factor: Any

  def __call__(self, images, train=False):
    return jnp.asarray(images, jnp.float32).reshape(images.shape[0], -1) * jnp.asarray(self.factor, jnp.float32)


class _ScaleWithOneHash(_Scale):
  """Every instance hashes alike: distinct models may collide on hash, never on equality."""

  def __hash__(self):
    return 0


IMAGES = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)


def test_predict_compiles_per_model_not_per_hash():
  for factor in (2.0, 3.0):
    np.testing.assert_array_equal(evaluate.predict(_ScaleWithOneHash(factor), {}, IMAGES),
                                  factor * IMAGES.reshape(2, -1))


def test_predict_accepts_a_model_with_unhashable_attributes():
  np.testing.assert_array_equal(evaluate.predict(_Scale(np.array([2.0])), {}, IMAGES), 2.0 * IMAGES.reshape(2, -1))


def test_predict_keeps_a_bounded_number_of_compiled_models():
  first = _Scale(100.0)
  alive = weakref.ref(first)
  evaluate.predict(first, {}, IMAGES)
  for factor in range(40):
    evaluate.predict(_Scale(float(factor)), {}, IMAGES)
  del first
  gc.collect()
  assert alive() is None  # evicted: the cache does not hold every model ever predicted with
