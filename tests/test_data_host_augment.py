"""Host-side (Grain worker) decoding and ImageNet augmentations: geometry, ranges, determinism."""

import math

import numpy as np
import pytest

from resnet_jax.data import host_augment
from resnet_jax.data import host_pipeline
from resnet_jax.data import synthetic


def jpeg(height, width, seed=0):
  return synthetic.jpeg_bytes(synthetic.synthetic_photo(np.random.default_rng(seed), height, width))


def test_scale_augmentation_box_matches_a_shorter_side_in_256_480():
  rng = np.random.default_rng(0)
  shorts = []
  for width, height in [(500, 375), (375, 500), (1024, 300), (256, 256)]:
    for _ in range(200):
      x0, y0, x1, y1 = host_augment.sample_scale_crop(rng, width, height, 224, (256, 480))
      assert 0 <= x0 and 0 <= y0 and x1 <= width + 1e-6 and y1 <= height + 1e-6
      assert math.isclose(x1 - x0, y1 - y0, rel_tol=0.02)  # square in the resized image
      shorts.append(224 * min(width, height) / (x1 - x0))  # the shorter side S it implies
  shorts = np.asarray(shorts)
  assert shorts.min() > 255 and shorts.max() < 481 and shorts.std() > 50


def test_inception_box_area_and_aspect_ranges():
  rng = np.random.default_rng(1)
  width, height = 500, 375
  areas, ratios = [], []
  for _ in range(2000):
    x0, y0, x1, y1 = host_augment.sample_inception_crop(rng, width, height)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    areas.append((x1 - x0) * (y1 - y0) / (width * height))
    ratios.append((x1 - x0) / (y1 - y0))
  areas, ratios = np.asarray(areas), np.asarray(ratios)
  assert areas.min() >= 0.075 and areas.max() <= 1.0 and areas.mean() > 0.3
  assert ratios.min() >= 0.74 and ratios.max() <= 1.35
  # Fallback for extreme shapes: a centred box with the aspect ratio clamped.
  box = host_augment.sample_inception_crop(rng, 1000, 10, area_range=(0.99, 1.0), attempts=0)
  assert box == (493, 0, 506, 10)  # w = round(10 * 4/3) = 13


@pytest.mark.parametrize('mode', ['scale', 'inception'])
def test_random_crop_resize_output_and_determinism(mode):
  raw = jpeg(300, 420)
  a = host_augment.random_crop_resize(raw, np.random.default_rng(5), 64, mode, scale_range=(64, 120))
  b = host_augment.random_crop_resize(raw, np.random.default_rng(5), 64, mode, scale_range=(64, 120))
  assert a.shape == (64, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  grey = host_augment.random_crop_resize(raw, np.random.default_rng(5), 32, mode, channels=1, scale_range=(32, 40))
  assert grey.shape == (32, 32, 1)


def test_reduced_scale_jpeg_decode_matches_full_decode_closely():
  """A large JPEG cropped to a small output is decoded at a DCT reduction; the result is close to resizing
  the fully decoded image."""
  raw = jpeg(1200, 1600, seed=2)
  fast = host_augment.center_crop(raw, 256, 224).astype(np.float32)
  full = host_augment.center_crop(host_augment.decode(raw), 256, 224).astype(np.float32)
  assert fast.shape == full.shape == (224, 224, 3)
  assert np.abs(fast - full).mean() < 3.0


def test_center_crop_is_the_middle_of_the_resized_image():
  image = np.zeros((300, 400, 3), np.uint8)
  image[:, 150:250] = 255  # a central band 100 px wide (of 400)
  out = host_augment.center_crop(image, 300, 200)  # no resize: short side is already 300
  assert out.shape == (200, 200, 3)
  assert out[:, 50:150].min() == 255 and out[:, :45].max() == 0 and out[:, 155:].max() == 0
  # 320 crop of He et al. 2016 Table 5: shorter side 320, central 320 x 320.
  assert host_augment.center_crop(jpeg(375, 500), 320, 320).shape == (320, 320, 3)


def test_ten_crop_views_are_the_corners_centre_and_their_mirrors():
  image = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
  views = host_augment.ten_crop_views(image, 6)
  assert views.shape == (10, 6, 6, 3)
  np.testing.assert_array_equal(views[0], image[:6, :6])
  np.testing.assert_array_equal(views[1], image[:6, 6:])
  np.testing.assert_array_equal(views[2], image[4:, :6])
  np.testing.assert_array_equal(views[3], image[4:, 6:])
  np.testing.assert_array_equal(views[4], image[2:8, 3:9])
  np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])
  batch = host_augment.ten_crop([jpeg(60, 80), image], resize=10, crop=6)
  assert batch.shape == (20, 6, 6, 3) and batch.dtype == np.uint8
  np.testing.assert_array_equal(batch[10:], views)  # resize 10 == its shorter side: no resampling


def test_colour_jitter_and_lighting():
  rng = np.random.default_rng(4)
  image = synthetic.synthetic_photo(rng, 32, 32).astype(np.float32)
  np.testing.assert_allclose(host_augment.color_jitter(image, rng, 0, 0, 0), image)
  np.testing.assert_allclose(host_augment.pca_lighting(image, rng, 0.0), image)
  lit = host_augment.pca_lighting(image, np.random.default_rng(5), 0.1)
  shift = (lit - image).reshape(-1, 3)
  assert np.allclose(shift, shift[0], atol=1e-4) and np.abs(shift[0]).max() < 30  # a colour offset per image
  # Saturation 0 (alpha = 0 would be grey): jittered values stay within the achievable range.
  jittered = host_augment.to_uint8(host_augment.color_jitter(image, np.random.default_rng(6), 0.4, 0.4, 0.4))
  assert jittered.dtype == np.uint8 and jittered.shape == image.shape
  # Grey images under saturation only: a blend with itself.
  grey = np.repeat(image[..., :1], 3, axis=-1)
  np.testing.assert_allclose(host_augment.color_jitter(grey, rng, 0, 0, 0.4), grey, atol=1e-3)


def test_train_transform_with_everything_on():
  transform = host_pipeline.TrainTransform(crop='inception', image_size=48, color_jitter=0.4, pca_lighting=0.1)
  outs = [transform(jpeg(100, 140), host_pipeline.example_rng(0, q)) for q in range(20)]
  assert all(o.shape == (48, 48, 3) and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(outs[3], transform(jpeg(100, 140), host_pipeline.example_rng(0, 3)))


def test_corrupt_and_truncated_images_raise_corrupt_image_error():
  raw = jpeg(64, 64)
  for bad in (b'not an image at all', raw[:len(raw) // 2], b''):
    with pytest.raises(host_augment.CorruptImageError):
      host_augment.center_crop(bad, 32, 32)
  with pytest.raises(host_augment.CorruptImageError):
    host_augment.decode(np.zeros((4, 4, 3), np.float32))


def coordinate_image(height=200, width=256):
  """R = x, G = y, B = 0: a crop's pixel values name the region it came from."""
  y, x = np.mgrid[:height, :width]
  return np.stack([x, y * 255 // (height - 1), np.zeros_like(x)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize('mode', ['inception', 'scale'])
def test_training_crops_come_from_the_image_with_the_papers_geometry(mode):
  image = coordinate_image()
  height, width = image.shape[:2]
  for q in range(60):
    out = host_augment.random_crop_resize(image, host_pipeline.example_rng(1, q), 32, mode,
                                          scale_range=(40, 90)).astype(np.float64)
    x0, x1 = out[..., 0].min(), out[..., 0].max()
    y0, y1 = out[..., 1].min() * (height - 1) / 255, out[..., 1].max() * (height - 1) / 255
    assert 0 <= x0 and x1 <= width - 1 and 0 <= y0 and y1 <= height - 1
    box_w, box_h = x1 - x0 + 1, y1 - y0 + 1
    # Columns increase left to right (no flip inside the crop op) and rows top to bottom.
    assert out[0, -1, 0] >= out[0, 0, 0] and out[-1, 0, 1] >= out[0, 0, 1]
    if mode == 'inception':
      assert 0.06 <= box_w * box_h / (width * height) <= 1.0
      assert 0.7 <= box_w / box_h <= 1.45
    else:  # a square region: 32 px of a shorter side resized to S in [40, 90]
      assert 0.85 <= box_w / box_h <= 1.18
      assert 40 * 0.85 <= 32 * height / box_h <= 90 * 1.15
