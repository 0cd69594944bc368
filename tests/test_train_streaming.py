"""The streamed (Grain) input inside train_and_evaluate: ImageNet-style JPEG folders of varying sizes, inception
crops on the host, exact resume of the input position from the checkpoint, ten-crop evaluation."""

import json
import os

import jax
import numpy as np
import pytest

from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import parallel
from resnet_jax import train
from resnet_jax.errors import UserError
import data_helpers as testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(root, **overrides):
  base = {'dataset.name': f'folder:{root}', 'dataset.pipeline': 'grain', 'model.name': 'resnet18',
          'model.stage_widths': '(8,8,8,8)', 'batch_size': '8', 'eval_batch_size': '10', 'total_steps': '6',
          'schedule.boundaries_epochs': 'None', 'log_every_steps': '3', 'eval_every_steps': '6',
          'checkpoint_every_steps': '3', 'input.image_size': '32', 'input.eval_resize': '36',
          'input.eval_crop': '32', 'input.eval_crop_mode': 'ten', 'input.num_workers': '0'}
  base.update(overrides)
  return config_lib.build_config(os.path.join(REPO, 'configs', 'quickstart.py'), list(base.items()))


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope='module')
def streamed(tmp_path_factory):
  """The image folder and one uninterrupted streamed run of _config (6 steps, ten-crop evaluation at the end)."""
  root = tmp_path_factory.mktemp('streamed')
  testing.write_image_folder(str(root / 'images'), classes=('a', 'b', 'c'), per_class=8, splits=('train', 'test'),
                             sizes=((40, 52), (52, 40)), fmt='JPEG')
  straight = str(root / 'straight')
  result = train.train_and_evaluate(_config(root / 'images'), straight)
  return root / 'images', straight, result


def test_streamed_training_resumes_exactly_and_evaluates_ten_crops(tmp_path, streamed):
  root, straight, result = streamed
  assert result['num_examples'] == 24

  interrupted = str(tmp_path / 'interrupted')
  train.train_and_evaluate(_config(root, total_steps='3', eval_every_steps='3'), interrupted)
  meta = checkpoints.Checkpointer(interrupted, read_only=True).restore_meta(3)
  assert meta['data_state']['step'] == 3  # the input position is in the checkpoint
  train.train_and_evaluate(_config(root), interrupted)
  a, b = checkpoints.load(straight), checkpoints.load(interrupted)
  np.testing.assert_array_equal(_flat(a.variables), _flat(b.variables))

  evaluated = evaluate.evaluate_checkpoint(straight)
  assert evaluated['test_accuracy'] == result['test_accuracy'] and evaluated['num_examples'] == 24
  # A larger test crop than the training crop (He et al. 2016 Table 5: train 224, test 320).
  larger = evaluate.evaluate_checkpoint(straight, config=_config(root, **{
      'input.eval_resize': '48', 'input.eval_crop': '48', 'input.eval_crop_mode': 'center'}))
  assert larger['num_examples'] == 24 and 0.0 <= larger['test_accuracy'] <= 1.0
  lines = [json.loads(l) for l in open(os.path.join(straight, 'metrics.jsonl'))]
  assert [l['step'] for l in lines if 'train_loss' in l] == [3, 6]


def test_streamed_training_takes_several_steps_per_dispatch(tmp_path, streamed):
  """steps_per_dispatch=3 on streamed data: the batches of 3 steps are one program input (lax.scan over them), with
  the parameters of one step per dispatch."""
  root, one, _ = streamed
  three = str(tmp_path / 'three')
  train.train_and_evaluate(_config(root, steps_per_dispatch='3', **{'input.eval_crop_mode': 'center'}), three)
  lines = [json.loads(l) for l in open(os.path.join(three, 'metrics.jsonl'))]
  assert len([l for l in lines if 'compile_s' in l]) == 1  # stretches of 3 steps (logs every 3): one program
  np.testing.assert_allclose(_flat(checkpoints.load(one).variables), _flat(checkpoints.load(three).variables),
                             rtol=1e-4, atol=1e-5)


def test_a_position_saved_mid_epoch_under_the_earlier_streaming_order_is_refused(tmp_path):
  """Streaming checkpoints of earlier versions hold a position in another data order (state version 1): mid-epoch
  it cannot continue exactly, so restore_data says so; at an epoch boundary the next epochs take today's order."""
  root = tmp_path / 'images'
  testing.write_image_folder(str(root), classes=('a', 'b', 'c'), per_class=8, splits=('train', 'test'),
                             sizes=((40, 52),), fmt='JPEG')
  experiment = train.build_experiment(_config(root), parallel.make_mesh())
  try:
    saved = {'version': 1, 'seed': experiment.config.seed, 'global_batch': 8, 'num_examples': 24}
    with pytest.raises(UserError, match='saved in the middle of an epoch by a streaming pipeline of an earlier'):
      experiment.restore_data({'data_state': dict(saved, step=2)}, 2)
    experiment.restore_data({'data_state': dict(saved, step=3)}, 3)  # 3 x 8 = 24 examples: one whole epoch
    assert experiment.checkpoint_meta()['data_state']['step'] == 3
  finally:
    experiment.close()
