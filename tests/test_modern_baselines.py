"""The modern CIFAR rows (configs/cifar.py:resnet20_modern, ...) hold the values their comment cites, and nothing
else of the paper rows' recipe changes."""

import os

import pytest

from resnet_jax import config as config_lib
from resnet_jax import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(REPO, 'configs', 'cifar.py')

# The cited values, written out from the sources (the suite reads nothing outside the repository):
CITED = {
    # automl/trivialaugment confs/wresnet40x2_cifar10_b128_maxlr.1_ta_widesesp_nowarmup_200epochs.yaml
    'schedule.name': 'cosine', 'schedule.base_lr': 0.1, 'schedule.warmup': 'none', 'batch_size': 128,
    'augment.auto_augment': 'trivialaugment',
    'augment.mixup_alpha': 1.0,        # facebookresearch/mixup-cifar10 train.py --alpha default
    'augment.cutmix_alpha': 1.0,       # clovaai/CutMix-PyTorch README, CIFAR command: --beta 1.0
    'augment.mix_prob': 0.5,           # ... --cutmix_prob 0.5
    'augment.mix_switch_prob': 0.5,    # torchvision v2's RandomChoice of mixup/CutMix; timm --mixup-switch-prob
    'label_smoothing': 0.1,            # Szegedy et al. 2016 Sec. 7; torchvision v2 --label-smoothing 0.1
    'ema.decay': 0.9998, 'ema.warmup': True,  # timm train.py --model-ema-decay default, ModelEmaV3's ramp
}

def _flat(config, prefix=''):
  items = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      items.update(_flat(value, f'{prefix}{key}.'))
    else:
      items[f'{prefix}{key}'] = value
  return items


@pytest.mark.parametrize('depth', ['20', '56'])
def test_the_modern_rows_hold_the_cited_values_and_keep_the_rest_of_the_he2016_recipe(depth):
  modern = _flat(config_lib.build_config(f'{CIFAR}:resnet{depth}_modern'))
  he2016 = _flat(config_lib.build_config(f'{CIFAR}:preact_resnet164'))  # a row of the He et al. 2016 recipe
  assert {key: modern[key] for key in CITED} == CITED
  assert modern['model.name'] == f'cifar_resnet{depth}'
  assert modern['paper.published_error'] is None and 'no published error' in modern['paper.note']
  # Beyond the model and the row's name and source, the modern rows change only the cited values.
  changed = {key for key in modern if modern[key] != he2016[key] and not key.startswith('paper.')}
  assert changed - {'model.name'} <= set(CITED), changed - {'model.name'} - set(CITED)
  # The optimiser and normalisation are the He et al. 2016 rows' (SGD 0.9, weight decay 1e-4 on all, per channel).
  assert (modern['optimizer.name'], modern['optimizer.momentum'], modern['optimizer.nesterov']) == ('sgd', 0.9, False)
  assert (modern['optimizer.weight_decay'], modern['optimizer.weight_decay_on']) == (1e-4, 'all')
  assert modern['augment.normalization'] == 'per_channel'
  assert (modern['batch_norm.mode'], modern['batch_norm.group_size']) == ('ghost', 64)


def test_the_row_without_ema_differs_only_in_the_average():
  modern = _flat(config_lib.build_config(f'{CIFAR}:resnet20_modern'))
  no_ema = _flat(config_lib.build_config(f'{CIFAR}:resnet20_modern_no_ema'))
  differing = {key for key in modern if modern[key] != no_ema[key]}
  assert differing == {'ema.decay', 'paper.row'} and no_ema['ema.decay'] == 0.0


def test_the_modern_schedule_is_a_cosine_from_0_1_to_0_without_warm_up():
  config = config_lib.build_config(f'{CIFAR}:resnet20_modern', [('total_steps', '1000')])
  schedule = optim.make_schedule(config, steps_per_epoch=50_000 / 128, total_steps=1000)
  assert [float(schedule(step)) for step in (0, 500, 1000)] == pytest.approx([0.1, 0.05, 0.0], abs=1e-7)
  assert float(schedule(250)) == pytest.approx(0.05 * (1 + 2 ** -0.5), rel=1e-6)
