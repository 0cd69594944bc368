"""RandAugment (timm policy strings) and TrivialAugmentWide (torchvision) on the host path: each operation
against its PIL / NumPy re-statement at one intensity level, the policy parser, the magnitude noise and clip,
TrivialAugment's uniform choices, the bad inputs, and issue 24's all-on run (ResNet-D, EMA, LAMB, BCE, mixup/CutMix
and RandAugment, streamed) that trains, evaluates and resumes bitwise from the command line."""

import json

import jax
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

import conftest
from resnet_jax import checkpoints
from resnet_jax import train
from resnet_jax.data import auto_augment
from resnet_jax.data import host_pipeline
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError

FILL = (120, 110, 100)
BILINEAR = Image.Resampling.BILINEAR


def _image(channels=3):
  """24 wide x 20 high (not square, so a width/height mix-up shows): a gradient plus noise."""
  rng = np.random.default_rng(7)
  ramp = np.add.outer(np.arange(20) * 5, np.arange(24) * 4)[..., None] + np.array([0, 40, 90])[:channels]
  return np.clip(ramp + rng.integers(-30, 30, (20, 24, channels)), 0, 255).astype(np.uint8)


class ScriptedRng:
  """Stands in for the example's np.random.Generator with the draws a test chooses, in the order `augment`
  makes them (op index(es), then per op: apply draw, sign; TrivialAugment: op, bin, sign)."""

  def __init__(self, integers, randoms):
    self._integers, self._randoms = list(integers), list(randoms)

  def integers(self, high, size=None):
    if size is None:
      return self._integers.pop(0)
    values, self._integers = self._integers[:size], self._integers[size:]
    return np.asarray(values)

  def random(self):
    return self._randoms.pop(0)

  def normal(self, *args):
    raise AssertionError('mstd0 draws no noise')

  def uniform(self, *args):
    raise AssertionError('mstd0 draws no noise')


def _rand(name, image, level=5, increasing=True):
  """The RandAugment path with `name` chosen, applied (draw 0.0 <= p) and positive (sign draw 0.9)."""
  policy = auto_augment.parse_policy(f'rand-m{level}-n1-p0.5' + ('-inc1' if increasing else ''))
  rng = ScriptedRng([policy.operations.index(name)], [0.0, 0.9])
  return auto_augment.augment(policy, image, rng, fill=FILL)


def _restate(image, function):
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(function(pil), np.uint8)
  return out[..., None] if out.ndim == 2 else out


def _lookup(image, table):
  return np.asarray(table, np.uint8)[image]


# RandAugment at m5 (level 0.5), timm's arguments: rotate 15 deg, shear 0.15, translate 0.225 of the side,
# posterize 4 - int(2) = 2 bits, solarize 256 - 128, solarize-add min(128, int(55)), enhance max(.1, 1 + .45).
RAND_CASES = {
    'Rotate': lambda x: _restate(x, lambda p: p.rotate(15.0, resample=BILINEAR, fillcolor=FILL)),
    'ShearX': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, .15, 0, 0, 1, 0),
                                                          resample=BILINEAR, fillcolor=FILL)),
    'ShearY': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, 0, 0, .15, 1, 0),
                                                          resample=BILINEAR, fillcolor=FILL)),
    'TranslateXRel': lambda x: _restate(x, lambda p: p.transform(
        p.size, Image.Transform.AFFINE, (1, 0, .225 * 24, 0, 1, 0), resample=BILINEAR, fillcolor=FILL)),
    'TranslateYRel': lambda x: _restate(x, lambda p: p.transform(
        p.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, .225 * 20), resample=BILINEAR, fillcolor=FILL)),
    'PosterizeIncreasing': lambda x: x & 0b11000000,
    'SolarizeIncreasing': lambda x: np.where(x >= 128, 255 - x, x).astype(np.uint8),
    'SolarizeAdd': lambda x: _lookup(x, [min(255, v + 55) if v < 128 else v for v in range(256)]),
    'Equalize': lambda x: _restate(x, ImageOps.equalize),
    'AutoContrast': lambda x: _restate(x, ImageOps.autocontrast),
    'Invert': lambda x: 255 - x,
    'ColorIncreasing': lambda x: _restate(x, lambda p: ImageEnhance.Color(p).enhance(1.45)),
    'ContrastIncreasing': lambda x: _restate(x, lambda p: ImageEnhance.Contrast(p).enhance(1.45)),
    'BrightnessIncreasing': lambda x: _restate(x, lambda p: ImageEnhance.Brightness(p).enhance(1.45)),
    'SharpnessIncreasing': lambda x: _restate(x, lambda p: ImageEnhance.Sharpness(p).enhance(1.45)),
}


@pytest.mark.parametrize('name', sorted(RAND_CASES))
def test_each_rand_augment_operation_equals_its_re_statement(name):
  image = _image()
  out = _rand(name, image)
  np.testing.assert_array_equal(out, RAND_CASES[name](image))
  if name not in ('Equalize', 'AutoContrast', 'ColorIncreasing'):
    assert not np.array_equal(out, image)  # the level does something


def test_rand_augment_original_operations_use_timm_non_increasing_arguments():
  image = _image()
  # Posterize int(4 * .5) = 2 bits; Solarize int(256 * .5) = 128; enhance .1 + 1.8 * .5 = 1.0 (the identity).
  np.testing.assert_array_equal(_rand('Posterize', image, increasing=False), image & 0b11000000)
  np.testing.assert_array_equal(_rand('Solarize', image, increasing=False), np.where(image >= 128, 255 - image, image))
  np.testing.assert_array_equal(_rand('Contrast', image, increasing=False), image)
  # At level 0.2 the original Posterize keeps int(0.8) = 0 bits: black (timm on older Pillow).
  np.testing.assert_array_equal(_rand('Posterize', image, level=2, increasing=False), 0 * image)


def test_signed_operations_flip_with_the_sign_draw_and_grey_images_fill_with_one_value():
  image = _image()
  policy = auto_augment.parse_policy('rand-m5-n1-inc1')
  negative = auto_augment.augment(policy, image, ScriptedRng([policy.operations.index('Rotate')], [0.0, 0.1]),
                                  fill=FILL)
  np.testing.assert_array_equal(negative, _restate(image, lambda p: p.rotate(-15.0, resample=BILINEAR,
                                                                             fillcolor=FILL)))
  skipped = auto_augment.augment(policy, image, ScriptedRng([3], [0.6]), fill=FILL)  # 0.6 > p: not applied
  np.testing.assert_array_equal(skipped, image)
  grey = _image(channels=1)
  out = _rand('ShearX', grey)
  assert out.shape == grey.shape
  np.testing.assert_array_equal(out, _restate(grey, lambda p: p.transform(
      p.size, Image.Transform.AFFINE, (1, .15, 0, 0, 1, 0), resample=BILINEAR, fillcolor=FILL[0])))


# TrivialAugmentWide at bin 10 of 31: shear 0.33, translate int(10.67) = 10 px, rotate 45 deg, enhance 1.33,
# posterize 8 - round(2) = 6 bits, solarize threshold linspace(255, 0, 31)[10] = 170; fill 0 (torchvision's
# default).
TRIVIAL_CASES = {
    'Identity': lambda x: x,
    'ShearX': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, .33, 0, 0, 1, 0),
                                                          resample=BILINEAR, fillcolor=(0, 0, 0))),
    'ShearY': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, 0, 0, .33, 1, 0),
                                                          resample=BILINEAR, fillcolor=(0, 0, 0))),
    'TranslateX': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, 0, 10, 0, 1, 0),
                                                              resample=BILINEAR, fillcolor=(0, 0, 0))),
    'TranslateY': lambda x: _restate(x, lambda p: p.transform(p.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, 10),
                                                              resample=BILINEAR, fillcolor=(0, 0, 0))),
    'Rotate': lambda x: _restate(x, lambda p: p.rotate(45.0, resample=BILINEAR, fillcolor=(0, 0, 0))),
    'Brightness': lambda x: _restate(x, lambda p: ImageEnhance.Brightness(p).enhance(1.33)),
    'Color': lambda x: _restate(x, lambda p: ImageEnhance.Color(p).enhance(1.33)),
    'Contrast': lambda x: _restate(x, lambda p: ImageEnhance.Contrast(p).enhance(1.33)),
    'Sharpness': lambda x: _restate(x, lambda p: ImageEnhance.Sharpness(p).enhance(1.33)),
    'Posterize': lambda x: x & 0b11111100,
    'Solarize': lambda x: np.where(x >= 170, 255 - x, x).astype(np.uint8),
    'AutoContrast': lambda x: _restate(x, ImageOps.autocontrast),
    'Equalize': lambda x: _restate(x, ImageOps.equalize),
}


def test_trivial_augment_has_torchvisions_fourteen_operations():
  assert set(auto_augment.TRIVIAL_OPERATIONS) == set(TRIVIAL_CASES) and len(TRIVIAL_CASES) == 14


@pytest.mark.parametrize('name', sorted(TRIVIAL_CASES))
def test_each_trivial_augment_operation_equals_its_re_statement(name):
  image = _image()
  rng = ScriptedRng([auto_augment.TRIVIAL_OPERATIONS.index(name), 10], [0.9])
  out = auto_augment.augment(auto_augment.parse_policy('trivialaugment'), image, rng, fill=FILL)
  np.testing.assert_array_equal(out, TRIVIAL_CASES[name](image))


def test_policy_strings_parse_as_timm_reads_them():
  assert auto_augment.parse_policy('') is None
  assert auto_augment.parse_policy('trivialaugment').kind == 'trivialaugment'
  assert auto_augment.parse_policy('rand') == auto_augment.Policy(kind='rand')  # m10 n2 p0.5 (timm defaults)
  policy = auto_augment.parse_policy('rand-m7-mstd0.5-inc1')  # RSB A1/A2
  assert (policy.magnitude, policy.magnitude_std, policy.num_operations, policy.probability) == (7, .5, 2, .5)
  assert policy.operations == auto_augment.RAND_INCREASING_OPERATIONS
  policy = auto_augment.parse_policy('rand-n3-p0.8-mmax8-m9')
  assert (policy.num_operations, policy.probability, policy.magnitude_max, policy.magnitude) == (3, .8, 8, 9)
  assert policy.operations == auto_augment.RAND_OPERATIONS


def test_magnitude_noise_is_gaussian_or_uniform_and_clipped():
  rng = np.random.default_rng(0)
  gaussian = auto_augment.parse_policy('rand-m9-mstd0.5')
  draws = np.array([gaussian.noisy_magnitude(rng) for _ in range(20000)])
  assert draws.max() == 10.0 and draws.min() >= 0
  # N(9, 0.5) clipped at 10: P(clipped) = P(z > 2) = 0.0228.
  assert abs(np.mean(draws == 10.0) - stats.norm.sf(2.0)) < 0.004
  below = draws[draws < 10]
  assert abs(below.mean() - stats.truncnorm.mean(-np.inf, 2.0, loc=9, scale=.5)) < 0.01
  uniform = auto_augment.parse_policy('rand-m8-mstd101')  # timm: mstd > 100 is U[0, m]
  draws = np.array([uniform.noisy_magnitude(rng) for _ in range(20000)])
  assert stats.kstest(draws, stats.uniform(0, 8).cdf).pvalue > 0.01
  assert auto_augment.parse_policy('rand-m9-mmax6').noisy_magnitude(rng) == 6.0
  assert auto_augment.parse_policy('rand-m9').noisy_magnitude(rng) == 9.0


def test_trivial_augment_chooses_operations_bins_and_signs_uniformly(monkeypatch):
  chosen = []
  monkeypatch.setattr(auto_augment, 'apply_operation',
                      lambda image, name, argument, context: chosen.append((name, argument)) or image)
  policy, image, rng = auto_augment.parse_policy('trivialaugment'), _image()[:4, :4], np.random.default_rng(0)
  for _ in range(14 * 400):
    auto_augment.augment(policy, image, rng)
  names = [name for name, _ in chosen]
  counts = [names.count(name) for name in auto_augment.TRIVIAL_OPERATIONS]
  assert stats.chisquare(counts).pvalue > 0.01
  rotations = np.array([argument for name, argument in chosen if name == 'Rotate'])
  bins = np.round(np.abs(rotations) / 4.5).astype(int)  # linspace(0, 135, 31): 4.5 degrees apart
  np.testing.assert_allclose(np.abs(rotations), bins * 4.5)
  assert stats.chisquare(np.bincount(bins, minlength=31)).pvalue > 0.01
  negative = np.mean(rotations[rotations != 0] < 0)
  assert abs(negative - 0.5) < 4 * 0.5 / np.sqrt(len(rotations))


def test_the_host_transform_applies_the_policy_from_the_examples_generator():
  image = _image()
  plain = host_pipeline.TrainTransform(crop='none', image_shape=image.shape)
  augmented = host_pipeline.TrainTransform(crop='none', image_shape=image.shape, auto_augment='rand-m9-n2-p1-inc1')
  a = augmented(image, host_pipeline.example_rng(0, 5))
  np.testing.assert_array_equal(a, augmented(image, host_pipeline.example_rng(0, 5)))
  assert not np.array_equal(a, plain(image, host_pipeline.example_rng(0, 5)))
  assert not np.array_equal(a, augmented(image, host_pipeline.example_rng(0, 6)))


@pytest.mark.parametrize('policy,message', [
    ('rand-m11', 'magnitude m11 is outside [0, 10]'),
    ('rand-x3', "unknown key 'x'"),
    ('rand-m', "'m' is not a key followed by a number"),
    ('randaugment', "unknown policy 'randaugment'"),
    ('rand-inc0', "timm reads any value as on"),
    ('rand-n0', 'must be a whole number >= 1'),
    ('rand-p1.5', 'p1.5 is a probability'),
    ('rand-mmax12', 'mmax12 is outside [0, 10]'),
    ('rand-m9-m8', "key 'm' is given twice"),
])
def test_bad_policies_are_one_user_error_when_options_are_read(policy, message):
  with pytest.raises(UserError, match='config.augment.auto_augment=') as raised:
    pipelines.input_options(conftest.tiny_config(**{'augment.auto_augment': policy}))
  assert message in str(raised.value) and '\n' not in str(raised.value)


def test_a_fixed_size_dataset_streams_through_the_host_when_a_policy_is_on():
  source = sources.open_split('digits', 'train')
  options = pipelines.input_options(conftest.tiny_config(**{'augment.auto_augment': 'trivialaugment'}))
  assert pipelines.choose_pipeline(options, source) == 'grain'
  assert pipelines.choose_pipeline(pipelines.input_options(conftest.tiny_config()), source) == 'device'
  with pytest.raises(UserError, match="set config.dataset.pipeline='grain'"):
    pipelines.input_options(conftest.tiny_config(**{'augment.auto_augment': 'trivialaugment',
                                                    'dataset.pipeline': 'device'}))


@pytest.mark.parametrize('args,message', [
    (['--config.augment.auto_augment=rand-m9-q3'], "config.augment.auto_augment='rand-m9-q3': unknown key 'q'"),
    (['--config.augment.auto_augment=trivialaugment', '--config.dataset.pipeline=device'],
     "config.augment.auto_augment='trivialaugment' runs per example on the host"),
])
def test_the_command_line_refuses_before_compiling_and_writes_nothing(cli, monkeypatch, tmp_path, args, message):
  monkeypatch.setattr(train, '_train_loop', lambda *a, **k: pytest.fail('the train loop was reached'))
  workdir = tmp_path / 'never'
  status, _, err = cli('main', ['--workdir', str(workdir), '--config', conftest.QUICKSTART] + args)
  lines = err.strip().splitlines()
  assert status == 2 and lines[-1].startswith(f'error: {message}'), err[-2000:]
  assert sum(line.startswith('error:') for line in lines) == 1 and not workdir.exists()


# Everything of issue 24's acceptance run on at once, on the tiny run: ResNet-D (the deep stem and the average-pool
# projection, with projection shortcuts) + EMA + LAMB + BCE + mixup/CutMix + RandAugment. (Not cosine: the first
# part of the interrupted run is a run of 2 steps, whose cosine would differ; the step schedule drops at step 3,
# in the resumed part.)
ALL_ON = {'model.name': 'cifar_resnet20', 'model.stage_sizes': '(1,1,1)', 'model.stem': 'deep',
          'model.downsample': 'avg', 'model.shortcut_type': 'B', 'ema.decay': '0.9', 'ema.warmup': 'True',
          'optimizer.name': 'lamb', 'schedule.base_lr': '0.005', 'optimizer.weight_decay': '0.01',
          'optimizer.weight_decay_on': 'kernels', 'loss': 'bce', 'bce_target_threshold': '0.2',
          'augment.mixup_alpha': '0.2', 'augment.cutmix_alpha': '1.0',
          'augment.auto_augment': 'rand-m9-mstd0.5-inc1', 'input.num_workers': '0', 'total_steps': '4',
          'checkpoint_every_steps': '2', 'eval_every_steps': '4', 'log_every_steps': '2',
          'schedule.boundaries_steps': '3'}


def test_an_all_on_run_trains_evaluates_and_resumes_bitwise_from_the_command_line(cli, tmp_path):
  """The streamed path (a policy is on, so the digits split streams) with every modern option: the command line
  trains and evaluates both the weights and their average, and a run stopped at step 2 and resumed from its
  checkpoint (with the input position) ends bitwise where the uninterrupted run does."""
  args = lambda workdir, **more: conftest.TINY_ARGS + ['--workdir', str(workdir)] + [
      f'--config.{key}={value}' for key, value in {**ALL_ON, **more}.items()]
  straight, interrupted = tmp_path / 'straight', tmp_path / 'interrupted'
  for argv in (args(straight), args(interrupted, total_steps=2, eval_every_steps=2), args(interrupted)):
    status, _, err = cli('main', argv)
    assert status == 0, err[-3000:]
  lines = [json.loads(line) for line in open(straight / 'metrics.jsonl')]
  losses = [line['train_loss'] for line in lines if 'train_loss' in line]
  assert len(losses) == 2 and all(np.isfinite(losses))
  final = [line for line in lines if 'test_accuracy' in line][-1]
  assert final['step'] == 4 and 0 <= final['test_accuracy'] <= 1 and 0 <= final['ema_test_accuracy'] <= 1
  assert checkpoints.Checkpointer(str(interrupted), read_only=True).restore_meta(2)['data_state']['step'] == 2
  for ema in (False, True):
    a, b = checkpoints.load(str(straight), ema=ema), checkpoints.load(str(interrupted), ema=ema)
    assert a.step == b.step == 4 and a.ema == ema
    assert (a.config.model.stem, a.config.model.downsample, a.config.optimizer.name, a.config.loss) == (
        'deep', 'avg', 'lamb', 'bce')
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
