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
  # He et al. 2019 Table 5: the same recipe, only the architecture differs (ResNet-50 v1, -B, -C, -D).
  tricks = {row: config_lib.build_config(imagenet + f':{row}') for row in
            ('resnet50_tricks', 'resnet50b_tricks', 'resnet50c_tricks', 'resnet50d_tricks')}
  assert [(c.model.name, c.model.get('stride_on', '3x3')) for c in tricks.values()] == [
      ('resnet50', '1x1'), ('resnet50', '3x3'), ('resnet50c', '3x3'), ('resnet50d', '3x3')]
  assert [c.paper.published_error for c in tricks.values()] == [23.79, 23.34, 23.13, 22.84]
  d = tricks['resnet50d_tricks']
  assert (d.input.train_crop, d.input.color_jitter, d.input.pca_lighting, d.input.eval_crop) == (
      'inception', 0.4, 0.1, 224)
  assert d.batch_norm.group_size == 128 and d.augment.normalization == 'imagenet'


def test_compute_dtype_names():
  assert classifier.compute_dtype('auto') == (jnp.bfloat16 if jax.default_backend() in ('gpu', 'tpu') else jnp.float32)
  assert classifier.compute_dtype('bfloat16') == jnp.bfloat16 and classifier.compute_dtype('float32') == jnp.float32
  with pytest.raises(config_lib.UserError, match="config.model.dtype: unknown dtype 'float33'.*or 'auto'"):
    classifier.compute_dtype('float33')


# The papers' recipes, hard-coded from the papers (the suite reads nothing outside the repository): per source
# prefix, what the paper states. lr: base learning rate; drops: where it is divided by 10 (steps or epochs);
# length: total steps or epochs; warmup: (steps or epochs, lr) or None.
_HE2015_CIFAR = dict(lr=0.1, drops_steps=(32_000, 48_000), total_steps=64_000, batch=128, wd=1e-4, momentum=0.9,
                     nesterov=False, warmup=None)   # He et al. 2015 §4.2
_HE2016_CIFAR = dict(_HE2015_CIFAR, warmup=(400, 0.01))   # He et al. 2016 appendix: warm-up in every CIFAR run
PAPER_RECIPES = {
    'He et al. 2015, Table 6': _HE2015_CIFAR,
    'He et al. 2016, Table 1': _HE2016_CIFAR,
    'He et al. 2016, Table 2': _HE2016_CIFAR,
    'He et al. 2016, Table 3': _HE2016_CIFAR,
    'He et al. 2016, Table 4': dict(_HE2016_CIFAR, batch=64),   # the batch-64 ResNet-1001 (†)
    # He et al. 2015 §3.4 (ImageNet): batch 256, lr 0.1, wd 1e-4, momentum 0.9 (Caffe SGD); the drops are
    # "when the error plateaus", not given.
    'He et al. 2015, Table 2': dict(lr=0.1, batch=256, wd=1e-4, momentum=0.9, nesterov=False, warmup=None),
    'He et al. 2015, Table 3': dict(lr=0.1, batch=256, wd=1e-4, momentum=0.9, nesterov=False, warmup=None),
    # He et al. 2016 appendix (ImageNet): lr 0.1, no warm-up, /10 at epochs 30 and 60, batch 256.
    'He et al. 2016, Table 5': dict(lr=0.1, drops_epochs=(30, 60), batch=256, warmup=None),
    # Huang et al. 2016 §4: 500 epochs, batch 128, lr 0.1 /10 at 250 and 375, wd 1e-4, Nesterov 0.9.
    'Huang et al. 2016, Table 1': dict(lr=0.1, drops_epochs=(250, 375), total_epochs=500, batch=128, wd=1e-4,
                                       momentum=0.9, nesterov=True, warmup=None),
    # ... 1202 layers: 300 epochs, lr 0.01 for the first 10 epochs, then 0.1, /10 at 150 and 225.
    'Huang et al. 2016, Sec. 4': dict(lr=0.1, drops_epochs=(150, 225), total_epochs=300, batch=128, wd=1e-4,
                                      momentum=0.9, nesterov=True, warmup=(10, 0.01)),
    # Xie et al. 2017 appendix A (CIFAR): batch 128, wd 5e-4, momentum 0.9, lr 0.1, 300 epochs, /10 at 150, 225.
    'Xie et al. 2017, Table 7': dict(lr=0.1, drops_epochs=(150, 225), total_epochs=300, batch=128, wd=5e-4,
                                     momentum=0.9),
    # Xie et al. 2017 §5.1 (ImageNet): batch 256, wd 1e-4, momentum 0.9, lr 0.1 (its drops: "three times").
    'Xie et al. 2017, Table 3': dict(lr=0.1, batch=256, wd=1e-4, momentum=0.9),
    'Xie et al. 2017, Table 4': dict(lr=0.1, batch=256, wd=1e-4, momentum=0.9),
    # Huang et al. 2017 §4.2: batch 64, 300 epochs, lr 0.1 /10 at 50% and 75%, wd 1e-4, Nesterov 0.9.
    'Huang et al. 2017, Table 2': dict(lr=0.1, drops_epochs=(150, 225), total_epochs=300, batch=64, wd=1e-4,
                                       momentum=0.9, nesterov=True, warmup=None),
    # He et al. 2019 §2.1 + §3.1 (Table 5's setting): NAG, batch 1024, lr 0.1 x 1024/256 = 0.4 after a linear
    # warm-up of 5 epochs from 0, /10 at epochs 30, 60, 90 of 120, wd 1e-4 without bias/BN decay, zero gamma.
    'He et al. 2019 (Bag of Tricks), Table 5': dict(lr=0.4, drops_epochs=(30, 60, 90), total_epochs=120,
                                                    batch=1024, wd=1e-4, wd_on='kernels', momentum=0.9,
                                                    nesterov=True, linear_warmup_epochs=5, zero_gamma=True),
    'fb.resnet.torch': None,   # a code release, not a paper: its recipe is the config's default, not checked here
    # The modern recipes: every fact in MODERN_FACTS below (test_modern_rows_state_their_recipes).
    'He et al. 2019 (Bag of Tricks), Table 6': None,
    'Wightman et al. 2021 (ResNet strikes back)': None,
    'torchvision ResNet50_Weights.IMAGENET1K_V2': None,
    # configs/cifar.py's modern CIFAR rows: a recipe assembled from several sources, stated above those rows.
    'Modern CIFAR recipe': None,
}
# Parameter counts the papers state (M): He et al. 2015 Table 6, He et al. 2016 Table 3/4, Xie et al. 2017
# Table 7, Huang et al. 2017 Table 2.
PAPER_PARAMS = {
    'cifar_resnet20': 0.27, 'cifar_resnet32': 0.46, 'cifar_resnet44': 0.66, 'cifar_resnet56': 0.85,
    'cifar_resnet110': 1.7, 'cifar_resnet1202': 19.4, 'cifar_preact_resnet164': 1.7, 'cifar_preact_resnet1001': 10.2,
    'resnext29_8x64d': 34.4, 'resnext29_16x64d': 68.1, 'densenet_bc_100_12': 0.8,
}
# The models whose row changes the unit (1-layer units, gates, 1x1 shortcuts...) have other counts: only plain rows.
_PARAM_ROWS = {'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'resnet1202', 'preact_resnet164',
               'preact_resnet1001', 'resnext29_8x64d', 'resnext29_16x64d', 'densenet_bc_100_12'}


def _paper_recipe(source):
  matches = [recipe for prefix, recipe in PAPER_RECIPES.items() if source.startswith(prefix)]
  assert len(matches) == 1, f'no paper recipe recorded for {source!r}: add it to PAPER_RECIPES'
  return matches[0]


@pytest.mark.parametrize('module,row', ROWS, ids=[f'{m}:{r}' for m, r in ROWS])
def test_every_row_follows_its_papers_recipe(module, row):
  config = config_lib.build_config(os.path.join(REPO, 'configs', f'{module}.py') + f':{row}')
  recipe = _paper_recipe(config.paper.source)
  if recipe is None:
    return
  schedule, optimizer = config.schedule, config.optimizer
  assert schedule.name == 'step' and schedule.base_lr == recipe['lr'] and schedule.decay_factor == 0.1
  assert config.batch_size == recipe['batch']
  if 'drops_steps' in recipe:
    assert tuple(schedule.boundaries_steps) == recipe['drops_steps'] and not schedule.boundaries_epochs
  if 'drops_epochs' in recipe:
    assert tuple(schedule.boundaries_epochs) == recipe['drops_epochs'] and not schedule.boundaries_steps
  if 'total_steps' in recipe:
    assert config.total_steps == recipe['total_steps'] and config.total_epochs is None
  if 'total_epochs' in recipe:
    assert config.total_epochs == recipe['total_epochs'] and config.total_steps is None
  if 'wd' in recipe:
    assert optimizer.weight_decay == recipe['wd'] and optimizer.weight_decay_on == recipe.get('wd_on', 'all')
  if 'momentum' in recipe:
    assert optimizer.name == 'sgd' and optimizer.momentum == recipe['momentum']
  if 'nesterov' in recipe:
    assert optimizer.nesterov == recipe['nesterov']
  if 'linear_warmup_epochs' in recipe:
    assert schedule.warmup == 'linear' and schedule.warmup_epochs == recipe['linear_warmup_epochs']
  assert config.model.get('zero_init_last_bn', False) == recipe.get('zero_gamma', False)
  if 'warmup' in recipe:
    warmup = recipe['warmup']
    if row in ('resnet110', 'resnet1202'):   # He et al. 2015 §4.2: 0.01 until training error < 80% (~400 it.)
      warmup = (400, 0.01)
    if warmup is None:
      assert schedule.warmup == 'none'
    else:
      length = schedule.warmup_steps if 'drops_steps' in recipe else schedule.warmup_epochs
      assert schedule.warmup == 'constant' and length == warmup[0]
      assert schedule.base_lr * schedule.warmup_factor == pytest.approx(warmup[1])


@pytest.mark.parametrize('row', sorted(_PARAM_ROWS))
def test_parameter_counts_the_papers_state(row):
  from resnet_jax.models import count_params  # pylint: disable=g-import-not-at-top
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'cifar.py') + f':{row}',
                                   [('model.scan_units', 'true')] if row.endswith(('1001', '1202')) else [])
  millions = count_params(classifier.model_from_config(config, 10)) / 1e6
  stated = PAPER_PARAMS[config.model.name]
  # Within one unit of the stated last digit (Xie et al. truncate: 68,155,210 is "68.1M"); ResNet-1001's 10.2M
  # leaves out BatchNorm's 0.15M (10.33M with it).
  tolerance = 0.15 if row == 'preact_resnet1001' else 10 ** -(len(repr(stated).split('.')[1]))
  assert abs(millions - stated) <= tolerance + 1e-9, f'{row}: {millions:.3f}M, the paper states {stated}M'


# Issue 24's recipe rows, every fact with its source (the facts file of the issue: He et al. 2019 §3-5 and Table 6;
# "ResNet strikes back" from timm's configs (TIMM), mmpretrain's RSB configs (MMP) and timm's results csv;
# torchvision's v2 recipe from the PyTorch blog of 2021-11-18 (BLOG) and its train.py command).
_RSB_COMMON = {
    'batch_size': 2048,                                   # MMP bs2048 schedule
    'optimizer.name': 'lamb', 'optimizer.eps': 1e-6,      # TIMM hparams.mdx "LAMB with BCE"; timm/optim/lamb.py
    'optimizer.clip_grad_norm': 1.0,                      # timm Lamb max_grad_norm=1.0
    'optimizer.weight_decay_on': 'kernels',               # timm param_groups_weight_decay: no wd on 1-D params
    'loss': 'bce', 'bce_target_threshold': 0.2,           # timm --bce-loss --bce-target-thresh 0.2
    'schedule.name': 'cosine', 'schedule.warmup': 'linear', 'schedule.warmup_epochs': 5.0,  # MMP bs2048_rsb
    'augment.mix_prob': 1.0, 'augment.mix_switch_prob': 0.5,  # timm Mixup defaults
    'augment.random_erase_prob': 0.0, 'ema.decay': 0.0, 'input.color_jitter': 0.0,  # none (facts file); --aa
    'input.interpolation': 'bicubic',                     # TIMM cfg, MMP
    'input.eval_resize': 235, 'input.eval_crop': 224,     # TIMM _rcfg: test 224, crop_pct 0.95
    'accumulate_steps': 1,
}
_TV2 = {  # BLOG's train.py command and its hidden values
    'model.name': 'resnet50', 'batch_size': 1024, 'schedule.base_lr': 0.5, 'optimizer.name': 'sgd',
    'optimizer.momentum': 0.9, 'optimizer.nesterov': False, 'schedule.name': 'cosine', 'schedule.warmup': 'linear',
    'schedule.warmup_epochs': 5.0, 'total_epochs': 600.0, 'augment.auto_augment': 'trivialaugment',
    'augment.random_erase_prob': 0.1, 'augment.random_erase_mode': 'const', 'optimizer.weight_decay': 2e-5,
    'optimizer.weight_decay_on': 'kernels', 'label_smoothing': 0.1, 'augment.mixup_alpha': 0.2,
    'augment.cutmix_alpha': 1.0, 'augment.mix_switch_prob': 0.5, 'input.image_size': 176,
    'input.eval_resize': 232, 'input.eval_crop': 224, 'repeated_augmentation': 4, 'ema.every_steps': 32,
    'ema.decay': 0.998908, 'input.interpolation': 'bilinear', 'loss': 'softmax', 'accumulate_steps': 1,
}
_TRICKS_REFINED = {  # He et al. 2019 §3.1 (Table 5's recipe) + §5 refinements, ResNet-50-D with zero gamma
    'model.name': 'resnet50d', 'model.zero_init_last_bn': True, 'batch_size': 1024, 'schedule.base_lr': 0.4,
    'schedule.warmup': 'linear', 'schedule.warmup_epochs': 5.0, 'optimizer.nesterov': True,
    'optimizer.weight_decay': 1e-4, 'optimizer.weight_decay_on': 'kernels', 'schedule.name': 'cosine',
}
MODERN_FACTS = {
    'resnet50d_tricks_cosine': (77.91, {**_TRICKS_REFINED, 'label_smoothing': 0.0, 'augment.mixup_alpha': 0.0,
                                        'total_epochs': 120.0}),
    'resnet50d_tricks_cosine_ls': (78.31, {**_TRICKS_REFINED, 'label_smoothing': 0.1, 'augment.mixup_alpha': 0.0,
                                           'total_epochs': 120.0}),
    # §5.3: alpha 0.2, 200 epochs with mixup.
    'resnet50d_bag_of_tricks': (79.15, {**_TRICKS_REFINED, 'label_smoothing': 0.1, 'augment.mixup_alpha': 0.2,
                                        'augment.cutmix_alpha': 0.0, 'total_epochs': 200.0}),
    'resnet50_rsb_a1': (80.4, {**_RSB_COMMON, 'total_epochs': 600.0, 'schedule.base_lr': 5e-3,
                               'optimizer.weight_decay': 0.01, 'label_smoothing': 0.1,
                               'model.survival_prob_last': 0.95, 'model.stochastic_depth_mode': 'example',
                               'repeated_augmentation': 3, 'augment.auto_augment': 'rand-m7-mstd0.5-inc1',
                               'augment.mixup_alpha': 0.2, 'augment.cutmix_alpha': 1.0, 'input.image_size': 224}),
    'resnet50_rsb_a2': (79.8, {**_RSB_COMMON, 'total_epochs': 300.0, 'schedule.base_lr': 5e-3,
                               'optimizer.weight_decay': 0.02, 'label_smoothing': 0.0,
                               'model.survival_prob_last': 0.95, 'repeated_augmentation': 3,
                               'augment.auto_augment': 'rand-m7-mstd0.5-inc1', 'augment.mixup_alpha': 0.1,
                               'augment.cutmix_alpha': 1.0, 'input.image_size': 224}),
    'resnet50_rsb_a3': (78.1, {**_RSB_COMMON, 'total_epochs': 100.0, 'schedule.base_lr': 8e-3,
                               'optimizer.weight_decay': 0.02, 'label_smoothing': 0.0,
                               'model.survival_prob_last': 1.0, 'repeated_augmentation': 1,
                               'augment.auto_augment': 'rand-m6-mstd0.5-inc1', 'augment.mixup_alpha': 0.1,
                               'augment.cutmix_alpha': 1.0, 'input.image_size': 160}),
    'resnet50_tv_v2': (80.858, _TV2),
}


def _field(config, path):
  node = config
  for part in path.split('.'):
    node = node.get(part, 1.0 if path == 'model.survival_prob_last' else None)
  return node


@pytest.mark.parametrize('row', sorted(MODERN_FACTS))
def test_modern_rows_state_their_recipes(row):
  top1, facts = MODERN_FACTS[row]
  config = config_lib.build_config(os.path.join(REPO, 'configs', 'imagenet.py') + f':{row}')
  assert config.paper.published_error == pytest.approx(100 - top1)
  for path, value in facts.items():
    assert _field(config, path) == (pytest.approx(value) if isinstance(value, float) else value), path
  # The recipe's schedule, resolved: linear warm-up to the peak, cosine to 0 at the end.
  steps_per_epoch = 1_281_167 / config.batch_size
  total = int(config.total_epochs * steps_per_epoch)
  schedule = optim.make_schedule(config, steps_per_epoch, total)
  warmup = int(round(5 * steps_per_epoch))
  assert float(schedule(warmup)) == pytest.approx(config.schedule.base_lr, rel=1e-3)
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-9)


def test_fixres_rows_train_small_and_test_at_224():
  """FixRes (Touvron et al. 2019) through the existing input options: RSB A3 trains at 160 and tests at 224 of
  235; torchvision's v2 trains at 176 and tests at 224 of 232. The zoo's global average pool makes the net
  resolution-agnostic: one set of parameters initialised at the train size classifies the test size."""
  from resnet_jax.data import pipelines  # pylint: disable=g-import-not-at-top
  for row, train_size, resize in (('resnet50_rsb_a3', 160, 235), ('resnet50_tv_v2', 176, 232)):
    config = config_lib.build_config(os.path.join(REPO, 'configs', 'imagenet.py') + f':{row}')
    options = pipelines.input_options(config)
    assert (options.image_size, options.eval_resize, options.eval_crop) == (train_size, resize, 224)
    assert options.eval_crop_mode == 'center' and options.train_crop == 'inception'
  model = classifier.model_from_config(config_lib.build_config(
      os.path.join(REPO, 'configs', 'cifar.py') + ':resnet20'), 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 22, 22, 3)), train=False)  # "train" at 22
  logits = model.apply(variables, jnp.zeros((2, 28, 28, 3)), train=False)             # "test" at 28
  assert logits.shape == (2, 10)
