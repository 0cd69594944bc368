"""Random erasing (config.augment.random_erase_*, issue 24): the device operation against a NumPy re-statement of
timm's RandomErasing loop (random_erasing.py L80-101) for the same draws, and the box statistics for a fixed seed."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import augment
from resnet_jax.data import pipelines

HEIGHT, WIDTH = 12, 10
MEAN, STD = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)


def _augment(**options):
  return augment.SmallImageAugment(crop_padding=0, flip=False, mean=MEAN, std=STD, **options)


def _numpy_boxes(draws, prob, count):
  """timm's loop, one example at a time, on the same uniform draws: [(top, left, h, w), ...] per example."""
  boxes = []
  for example in range(len(draws['erase'])):
    chosen = []
    if draws['erase'][example] < prob:
      wanted = 1 + min(int(draws['count'][example] * count), count - 1)
      for slot in range(wanted):
        for attempt in range(augment.ERASE_TRIES):
          area = draws['area'][example, slot, attempt] * HEIGHT * WIDTH / wanted
          aspect = math.exp(draws['log_aspect'][example, slot, attempt])
          h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
          if w < WIDTH and h < HEIGHT:
            top = int(draws['top'][example, slot, attempt] * (HEIGHT - h + 1))
            left = int(draws['left'][example, slot, attempt] * (WIDTH - w + 1))
            chosen.append((top, left, h, w))
            break
    boxes.append(chosen)
  return boxes


def _erased_mask(images_key, options, batch=64):
  """The device operation on a batch of white images; returns (output, the NumPy boxes of the same draws)."""
  erase = _augment(**options)
  images = jnp.full((batch, HEIGHT, WIDTH, 3), 255.0)
  out = np.asarray(jax.jit(lambda key, x: augment.erase_images(key, x, erase))(images_key, images))
  draw_key, _ = jax.random.split(images_key)
  draws = jax.tree.map(np.asarray, augment.erasing_draws(draw_key, batch, erase))
  return out, _numpy_boxes(draws, options['random_erase_prob'], options.get('random_erase_count', 1))


def test_const_boxes_equal_timms_loop():
  for count in (1, 3):
    out, boxes = _erased_mask(jax.random.key(7), {'random_erase_prob': 0.7, 'random_erase_mode': 'const',
                                                  'random_erase_count': count})
    for image, example_boxes in zip(out, boxes):
      expected = np.full(image.shape, 255.0, np.float32)
      for top, left, h, w in example_boxes:
        expected[top:top + h, left:left + w] = MEAN  # const 0 after normalisation: the mean colour
      np.testing.assert_allclose(image, expected)
    assert 0 < sum(bool(example) for example in boxes) < len(boxes)  # some erased, some not
    if count == 3:
      assert max(len(example) for example in boxes) > 1


def test_random_fills_are_standard_normal_after_normalisation():
  for mode in ('pixel', 'rand'):
    out, boxes = _erased_mask(jax.random.key(3), {'random_erase_prob': 1.0, 'random_erase_mode': mode})
    normalised, per_box = [], []
    for image, example_boxes in zip(out, boxes):
      for top, left, h, w in example_boxes:
        values = (image[top:top + h, left:left + w] - np.asarray(MEAN)) / np.asarray(STD)
        normalised.append(values.reshape(-1, 3))
        per_box.append(values.reshape(-1, 3).std(axis=0))
      outside = np.ones(image.shape[:2], bool)
      for top, left, h, w in example_boxes:
        outside[top:top + h, left:left + w] = False
      assert np.all(image[outside] == 255.0)  # nothing outside the boxes changes
    values = np.concatenate(normalised)
    assert abs(values.mean()) < 0.1 and abs(values.std() - 1) < 0.1
    if mode == 'rand':  # one colour per box
      np.testing.assert_allclose(per_box, 0, atol=1e-4)


def test_box_area_and_aspect_statistics_match_timm():
  batch = 4000
  erase = _augment(random_erase_prob=1.0)
  boxes, erased = augment.erasing_boxes(augment.erasing_draws(jax.random.key(0), batch, erase), HEIGHT, WIDTH,
                                        1.0, 1)
  boxes, erased = np.asarray(boxes)[:, 0], np.asarray(erased)[:, 0]
  rng = np.random.default_rng(0)  # timm's loop with NumPy's own draws
  reference = []
  for _ in range(batch):
    for _ in range(augment.ERASE_TRIES):
      area = rng.uniform(0.02, 1 / 3) * HEIGHT * WIDTH
      aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
      h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
      if w < WIDTH and h < HEIGHT:
        reference.append((h, w))
        break
  reference = np.asarray(reference)
  assert abs(erased.mean() - len(reference) / batch) < 0.01
  quantiles = np.linspace(0.1, 0.9, 9)
  area = lambda h, w: h * w / (HEIGHT * WIDTH)
  np.testing.assert_allclose(np.quantile(area(boxes[erased, 2], boxes[erased, 3]), quantiles),
                             np.quantile(area(reference[:, 0], reference[:, 1]), quantiles), atol=0.02)
  np.testing.assert_allclose(np.quantile(np.log(boxes[erased, 2] / boxes[erased, 3]), quantiles),
                             np.quantile(np.log(reference[:, 0] / reference[:, 1]), quantiles), atol=0.15)
  assert np.all(boxes[erased, 0] + boxes[erased, 2] <= HEIGHT) and np.all(boxes[erased, 1] + boxes[erased, 3] <= WIDTH)


def test_the_options_reach_both_pipelines_augmentation_and_off_changes_nothing():
  options = pipelines.InputOptions(random_erase_prob=0.25, random_erase_mode='rand', random_erase_count=2)
  for crop in ('pad_crop', 'inception'):  # the device-resident pipeline's, and the streamed one's
    built = pipelines.device_augmentation(options, crop, MEAN, STD)
    assert (built.random_erase_prob, built.random_erase_mode, built.random_erase_count) == (0.25, 'rand', 2)
    assert built.mean == MEAN and built.std == STD
  off = _augment(random_erase_prob=0.0)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, HEIGHT, WIDTH, 3), np.uint8))
  np.testing.assert_array_equal(off.apply(jax.random.key(0), images).images, images.astype(jnp.float32))
