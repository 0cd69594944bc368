"""Every shipped config and every paper row loads, names its source, and builds its model."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(f for f in glob.glob(os.path.join(REPO, 'configs', '*.py')) if not os.path.basename(f).startswith('_'))


def _rows(module):
  config_lib.load_config_file(os.path.join(REPO, 'configs', 'default.py'))  # makes `configs` importable
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f'configs.{module}').ROWS


ROWS = [('cifar', row) for row in sorted(_rows('cifar'))] + [('imagenet', row) for row in sorted(_rows('imagenet'))]


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_file_loads_and_validates(path):
  config = config_lib.build_config(path)
  assert config.model.name and config.dataset.name


@pytest.mark.parametrize('module,row', ROWS, ids=[f'{m}:{r}' for m, r in ROWS])
def test_every_paper_row_builds_its_model(module, row):
  # The deepest nets are traced with their stages scanned (same options otherwise; seconds instead of minutes).
  deep = any(d in row for d in ('101', '152', '200', '1001', '1202'))
  config = config_lib.build_config(os.path.join(REPO, 'configs', f'{module}.py') + f':{row}',
                                   [('model.scan_units', 'true')] if deep else [])
  assert config.paper.source and config.paper.row == row
  assert config.paper.published_error is None or 0 < config.paper.published_error < 100
  num_classes = {'cifar100': 100, 'imagenet2012': 1000}.get(config.dataset.name, 10)
  model = classifier.model_from_config(config, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False))
  assert shapes['params']['backbone']


def test_unknown_row_is_a_clear_error():
  with pytest.raises(config_lib.UserError, match="has no variant 'preact_resnet165'"):
    config_lib.build_config(os.path.join(REPO, 'configs', 'cifar.py:preact_resnet165'))


def test_recipes_follow_the_papers():
  path = os.path.join(REPO, 'configs', 'cifar.py')
  he2015 = config_lib.build_config(path + ':resnet56')
  assert he2015.augment.normalization == 'per_pixel_mean' and he2015.schedule.warmup == 'none'
  assert config_lib.build_config(path + ':resnet110').schedule.warmup == 'constant'
  assert he2015.batch_norm.mode == 'ghost' and he2015.batch_norm.group_size == 64
  sd = config_lib.build_config(path + ':resnet110_stochastic_depth')
  steps_per_epoch = 50_000 / 128
  schedule = optim.make_schedule(sd, steps_per_epoch, int(500 * steps_per_epoch))
  assert float(schedule(round(250 * steps_per_epoch) - 1)) == pytest.approx(0.1)
  assert float(schedule(round(250 * steps_per_epoch))) == pytest.approx(0.01)
  assert sd.optimizer.nesterov and sd.model.survival_prob_last == 0.5
  assert config_lib.build_config(path + ':resnext29_8x64d').optimizer.weight_decay == 5e-4
  assert config_lib.build_config(path + ':densenet_bc_100_12').batch_size == 64
  imagenet = os.path.join(REPO, 'configs', 'imagenet.py')
  r50 = config_lib.build_config(imagenet + ':resnet50')
  assert r50.input.train_crop == 'inception' and r50.optimizer.nesterov and r50.batch_size == 256
  assert config_lib.build_config(imagenet + ':resnet34_option_a').input.eval_crop_mode == 'ten'
  assert config_lib.build_config(imagenet + ':preact_resnet200_320').input.eval_crop == 320


def test_compute_dtype_names():
  assert classifier.compute_dtype('auto') == (jnp.bfloat16 if jax.default_backend() in ('gpu', 'tpu') else jnp.float32)
  assert classifier.compute_dtype('bfloat16') == jnp.bfloat16 and classifier.compute_dtype('float32') == jnp.float32
  with pytest.raises(config_lib.UserError, match="config.model.dtype: unknown dtype 'float33'.*or 'auto'"):
    classifier.compute_dtype('float33')
