"""Mixup and CutMix inside the jitted step (config.augment.mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob;
resnet_jax/data/augment.py `mix_images`): timm's mode-'batch' semantics against a NumPy re-statement of
timm/data/mixup.py, the mixed targets, the same batch on 1 and 2 devices, a tiny run that trains and resumes
bitwise, and the bad inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from resnet_jax import checkpoints
from resnet_jax import config as config_lib
from resnet_jax import evaluate
from resnet_jax import losses
from resnet_jax import parallel
from resnet_jax import train
from resnet_jax.data import augment
from resnet_jax.data import pipelines

DRAWS = 20_000  # per statistical comparison: a two-sample KS test then resolves ~2% in distribution
MIX = {'augment.mixup_alpha': '0.2', 'augment.cutmix_alpha': '1.0'}  # RSB A1's and torchvision's v2 alphas


def draws_of(mixing: augment.SmallImageAugment, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`mixing_draws` of DRAWS batches, each with the mix operation's key of its own step key, as the step takes."""
  keys = jax.random.split(jax.random.key(seed), DRAWS)
  draw = lambda key: augment.mixing_draws(augment.operation_keys(key)[2], mixing, height, width)
  return jax.tree.map(np.asarray, jax.jit(jax.vmap(draw))(keys))


def numpy_rand_bbox(lam, center_row, center_column, height, width):
  """timm's rand_bbox (timm/data/mixup.py L30-51) for given centres, in NumPy float64: (yl, yh, xl, xh)."""
  ratio = np.sqrt(1 - lam)
  cut_height, cut_width = (height * ratio).astype(int), (width * ratio).astype(int)
  return (np.clip(center_row - cut_height // 2, 0, height), np.clip(center_row + cut_height // 2, 0, height),
          np.clip(center_column - cut_width // 2, 0, width), np.clip(center_column + cut_width // 2, 0, width))


def numpy_cutmix_lambda(rng, alpha, height, width, size):
  """timm's CutMix lambda with NumPy's draws: Beta(alpha, alpha), a uniform centre, the box, and correct_lam's
  1 - box area / image area (cutmix_bbox_and_lam, L77-87)."""
  lam = rng.beta(alpha, alpha, size)
  top, bottom, left, right = numpy_rand_bbox(lam, rng.integers(0, height, size), rng.integers(0, width, size),
                                             height, width)
  return 1 - (bottom - top) * (right - left) / (height * width)


def ks_distance(sample, other):
  """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
  values = np.sort(np.concatenate([sample, other]))
  cdf = lambda data: np.searchsorted(np.sort(data), values, side='right') / len(data)
  return float(np.max(np.abs(cdf(sample) - cdf(other))))


# Critical value of the KS statistic at level 0.001 for two samples of DRAWS: sqrt(-ln(0.0005) / 2) * sqrt(2 / n).
KS_LIMIT = np.sqrt(-np.log(0.0005) / 2) * np.sqrt(2 / DRAWS)


@pytest.mark.parametrize('alpha', [0.2, 1.0])
def test_lambda_is_beta_and_the_choices_have_their_probabilities(alpha):
  """mixup's lambda ~ Beta(alpha, alpha) (timm _params_per_batch, L141-157), a batch mixed with probability
  mix_prob and, with both alphas on, CutMix chosen with probability mix_switch_prob."""
  # NumPy's float64 draws rounded to float32 as JAX's are: Beta(0.2, 0.2) puts ~2% of its mass within float32's
  # resolution of 1, which rounds to exactly 1 (a batch left as it is) and would otherwise dominate the statistic.
  numpy_beta = lambda rng, size: rng.beta(alpha, alpha, size).astype(np.float32)
  mixup_only = draws_of(augment.SmallImageAugment(mixup_alpha=alpha, mix_prob=0.6), 32, 32)
  assert not mixup_only['cutmix'].any()
  assert ks_distance(mixup_only['lambda'], numpy_beta(np.random.default_rng(0), DRAWS)) < KS_LIMIT
  five_sigma = 5 * np.sqrt(0.25 / DRAWS)
  assert abs(mixup_only['mixed'].mean() - 0.6) < five_sigma
  both = draws_of(augment.SmallImageAugment(mixup_alpha=alpha, cutmix_alpha=1.0, mix_switch_prob=0.3), 32, 32)
  assert both['mixed'].all() and abs(both['cutmix'].mean() - 0.3) < five_sigma
  # Each operation draws from its own alpha: CutMix's lambda is Beta(1, 1), mixup's Beta(alpha, alpha).
  reference = np.random.default_rng(1)
  assert ks_distance(both['lambda'][both['cutmix']], reference.uniform(size=DRAWS)) < 2 * KS_LIMIT
  assert ks_distance(both['lambda'][~both['cutmix']], numpy_beta(reference, DRAWS)) < 2 * KS_LIMIT


@pytest.mark.parametrize('height, width', [(32, 32), (24, 40)])
def test_cutmix_box_and_corrected_lambda_are_timms(height, width):
  """The box of each drawn (lambda, centre) is NumPy's rand_bbox of them, and the corrected lambda is 1 - area /
  image area; over many batches its distribution is that of timm's CutMix with NumPy's own draws."""
  draws = draws_of(augment.SmallImageAugment(cutmix_alpha=1.0), height, width)
  assert draws['cutmix'].all()
  assert draws['center'][:, 0].min() == 0 and draws['center'][:, 0].max() == height - 1
  assert draws['center'][:, 1].min() == 0 and draws['center'][:, 1].max() == width - 1
  boxes = np.asarray(jax.jit(jax.vmap(lambda lam, center: augment.cutmix_box(lam, center, height, width)))(
      draws['lambda'], draws['center']))
  expected = np.stack(numpy_rand_bbox(draws['lambda'].astype(np.float64), draws['center'][:, 0],
                                      draws['center'][:, 1], height, width), axis=1)
  np.testing.assert_array_equal(boxes, expected)
  corrected = np.asarray(jax.vmap(lambda box: augment.box_corrected_weight(box, height, width))(boxes))
  area = (expected[:, 1] - expected[:, 0]) * (expected[:, 3] - expected[:, 2])
  np.testing.assert_allclose(corrected, 1 - area / (height * width), rtol=0, atol=1e-7)
  assert (corrected >= draws['lambda'] - 1e-6).mean() > 0.99  # clipping only shrinks the box: lambda grows
  assert (corrected > draws['lambda'] + 0.05).mean() > 0.2    # ... and often, so the correction matters
  # The distribution, compared in float64 on both sides (its atoms, the box areas, would otherwise sit an ulp apart).
  numpy_corrected = numpy_cutmix_lambda(np.random.default_rng(2), 1.0, height, width, DRAWS)
  assert ks_distance(1 - area / (height * width), numpy_corrected) < KS_LIMIT


def mixed(mixing, key, images):
  batch = jax.jit(mixing.apply)(key, images)
  return np.asarray(batch.images), float(batch.label_weight)


def test_mixed_images_follow_the_drawn_operation():
  """mixup: lambda * x + (1 - lambda) * partner; CutMix: the partner's exact pixels inside the box, the image's
  own outside, and the label weight is the fraction of its own pixels."""
  # Example i takes values in [40 i, 40 i + 40): no pixel equals its partner's, so each pixel shows its source.
  images = (np.arange(6)[:, None, None, None] * 40 + np.random.default_rng(0).integers(0, 40, (6, 16, 20, 3)))
  images = images.astype(np.uint8)
  partner = images[::-1].astype(np.float32)
  mixing = augment.SmallImageAugment(crop_padding=0, flip=False, mixup_alpha=0.4, cutmix_alpha=1.0)
  seen = set()
  for seed in range(12):
    key = jax.random.key(seed)
    draws = augment.mixing_draws(augment.operation_keys(key)[2], mixing, 16, 20)
    out, weight = mixed(mixing, key, images)
    if bool(draws['cutmix']):
      own = out == images
      assert np.all(own | (out == partner))
      top, bottom, left, right = np.asarray(augment.cutmix_box(draws['lambda'], draws['center'], 16, 20))
      in_box = np.zeros((16, 20), bool)
      in_box[top:bottom, left:right] = True
      np.testing.assert_array_equal(own, np.broadcast_to(~in_box[None, :, :, None], own.shape))
      assert weight == pytest.approx(own[..., 0].mean(), abs=1e-6)
    else:
      assert weight == pytest.approx(float(draws['lambda']))
      np.testing.assert_allclose(out, weight * images + (1 - weight) * partner, rtol=1e-6, atol=1e-4)
    seen.add(bool(draws['cutmix']))
  assert seen == {False, True}
  # Never mixed (mix_prob 0): the images pass through and the weight stays 1.
  never = augment.SmallImageAugment(crop_padding=0, flip=False, mixup_alpha=0.4, mix_prob=0.0)
  out, weight = mixed(never, jax.random.key(0), images)
  assert weight == 1.0 and np.array_equal(out, images)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_mixed_targets_are_timms_and_sum_to_one(smoothing):
  """timm's mixup_target (L22-27): off = eps / C, on = 1 - eps + off, lambda * y + (1 - lambda) * y.flip(0); each
  row sums to 1, and both losses of mixed targets are the lambda-weighted losses of the two labels (the mixup
  criterion of Zhang et al. 2018), since each is linear in its targets."""
  labels, classes, lam = jnp.asarray([3, 0, 7, 7, 1, 9]), 10, 0.3
  mixing = augment.SmallImageAugment(mixup_alpha=0.2)
  targets = mixing.mix_targets(losses.one_hot_targets(labels, classes, smoothing), jnp.float32(lam))
  off = smoothing / classes
  one_hot = lambda values: np.where(np.arange(classes) == np.asarray(values)[:, None], 1 - smoothing + off, off)
  np.testing.assert_allclose(targets, one_hot(labels) * lam + one_hot(labels[::-1]) * (1 - lam), atol=1e-7)
  np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, atol=1e-6)
  logits = jax.random.normal(jax.random.key(0), (6, classes))
  for loss in ('softmax', 'bce'):
    each = lambda values: losses.classification_loss(logits, losses.one_hot_targets(values, classes, smoothing), loss)
    np.testing.assert_allclose(losses.classification_loss(logits, targets, loss),
                               lam * each(labels) + (1 - lam) * each(labels[::-1]), rtol=1e-5)
  # An augmentation that never mixes leaves the targets as they are (the step compiles no mixing).
  plain = losses.one_hot_targets(labels, classes, smoothing)
  assert augment.SmallImageAugment().mix_targets(plain, jnp.float32(lam)) is plain


def test_same_seed_same_mixed_batch_on_one_and_two_devices():
  """The batch is one global array: pairing by the flip crosses devices, and the draws do not depend on the
  split, so 1 and 2 devices give the same images and targets bitwise (pad-crop and flip included)."""
  assert jax.device_count() == 2  # the suite's fake devices (conftest)
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (8, 12, 12, 3)).astype(np.uint8), rng.integers(0, 10, 8)
  mixing = augment.SmallImageAugment(crop_padding=2, center=(120.0, 110.0, 100.0), mixup_alpha=0.2,
                                     cutmix_alpha=1.0)

  def step(key, images, labels):
    batch = mixing.apply(key, images)
    return batch.images, mixing.mix_targets(losses.one_hot_targets(labels, 10, 0.1), batch.label_weight)

  results, seen = {}, set()
  for devices in (1, 2):
    mesh = parallel.make_mesh(jax.devices()[:devices])
    on_devices = [jax.device_put(values, parallel.batch_sharding(mesh)) for values in (images, labels)]
    run = jax.jit(step)
    results[devices] = [jax.tree.map(np.asarray, run(jax.random.key(seed), *on_devices)) for seed in range(6)]
  for seed, (one, two) in enumerate(zip(results[1], results[2])):
    jax.tree.map(np.testing.assert_array_equal, one, two)
    seen.add(bool(augment.mixing_draws(augment.operation_keys(jax.random.key(seed))[2], mixing, 12, 12)['cutmix']))
  assert seen == {False, True}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The suite's tiny run with mixup and CutMix on the device-resident path, its first 4 steps (one log line, as
  the golden run's first): `whole` 4 steps, `split` 2 steps and then resumed to 4. (The streamed path's resume
  with mixing on: tests/test_data_auto_augment.py's all-on run.)"""
  root = tmp_path_factory.mktemp('mix')
  whole, split = str(root / 'whole'), str(root / 'split')
  first_steps = dict(MIX, total_steps='4', eval_every_steps='4', checkpoint_every_steps='2')
  train.train_and_evaluate(conftest.tiny_config(**first_steps), whole)
  train.train_and_evaluate(conftest.tiny_config(**{**first_steps, 'total_steps': '2', 'eval_every_steps': '2'}),
                           split)
  train.train_and_evaluate(conftest.tiny_config(**first_steps), split)
  return {'whole': whole, 'split': split}


def test_a_run_with_mixing_trains_evaluates_and_resumes_bitwise(runs):
  lines = [json.loads(line) for line in open(os.path.join(runs['whole'], 'metrics.jsonl'))]
  golden = json.load(open(os.path.join(conftest.REPO, 'tests', 'golden', 'quickstart_tiny_metrics.json')))['lines']
  losses_of = lambda records: [line['train_loss'] for line in records if 'train_loss' in line]
  assert all(np.isfinite(losses_of(lines))) and len(losses_of(lines)) == 1
  # The batches were mixed: the unmixed run's loss over the same first 4 steps differs.
  assert losses_of(lines) != losses_of(golden)[:1]
  assert 0 <= [line for line in lines if 'test_accuracy' in line][-1]['test_accuracy'] <= 1
  whole, split = checkpoints.load(runs['whole']), checkpoints.load(runs['split'])
  assert whole.step == split.step == 4 and whole.config.augment.cutmix_alpha == 1.0
  jax.tree.map(np.testing.assert_array_equal, split.variables, whole.variables)


@pytest.mark.parametrize('field, value, message', [
    ('mixup_alpha', '-0.2', 'config.augment.mixup_alpha=-0.2 must be >= 0'),
    ('cutmix_alpha', 'nan', 'config.augment.cutmix_alpha=nan must be >= 0'),
    ('mix_prob', '1.5', 'config.augment.mix_prob=1.5 is a probability: use a value in [0, 1]'),
    ('mix_switch_prob', '-0.1', 'config.augment.mix_switch_prob=-0.1 is a probability'),
])
def test_bad_mixing_options_are_one_error_line_before_compiling(cli, monkeypatch, tmp_path, field, value, message):
  def reached(*args, **kwargs):
    raise AssertionError('the train loop was reached: the bad input was not refused before compiling')
  monkeypatch.setattr(train, '_train_loop', reached)
  monkeypatch.setattr(evaluate.Evaluator, 'evaluate', reached)
  workdir = tmp_path / 'run'
  status, _, err = cli('main', conftest.TINY_ARGS + ['--workdir', str(workdir), f'--config.augment.{field}={value}'])
  lines = err.strip().splitlines()
  assert status == 2 and 'Traceback' not in err, err[-3000:]
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]], err[-3000:]
  assert lines[-1].startswith(f'error: {message}'), err[-3000:]
  assert not workdir.exists()


def test_an_odd_batch_is_refused_only_when_mixing():
  """timm's Mixup asserts an even batch (every example needs a partner). On the suite's 2 devices every batch is
  even, so the check is called on the config directly (1 device, or 3, would reach it through the CLI)."""
  with pytest.raises(config_lib.UserError, match=r'config.batch_size=33 is odd, but mixup/CutMix .* use an even'):
    pipelines.input_options(conftest.tiny_config(**MIX, batch_size='33'))
  pipelines.input_options(conftest.tiny_config(batch_size='33'))  # no mixing: any batch
  pipelines.input_options(conftest.tiny_config(**MIX, **{'augment.mix_prob': '0.0'}, batch_size='33'))
