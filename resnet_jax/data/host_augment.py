"""Host-side image decoding and the ImageNet augmentations of the papers, in NumPy and PIL.

This module imports neither JAX nor TensorFlow: it runs inside Grain worker processes (which start by
importing it), so it stays cheap to import. Every function returns uint8 pixels; normalisation stays in the
model (`resnet_jax.classifier.Classifier`), with the run's statistics (`resnet_jax.data.normalization`).

Training crops (one image in, one `size x size` image out):
  - `sample_scale_crop`: scale augmentation of He et al. 2015 Sec. 3.4 -- "the image is resized with its
    shorter side randomly sampled in [256, 480] for scale augmentation. A 224x224 crop is randomly sampled
    from an image or its horizontal flip".
  - `sample_inception_crop`: the random-sized crop of fb.resnet.torch (`RandomSizedCrop`) and torchvision
    (`RandomResizedCrop`): a box covering a uniform 8%..100% of the image area with aspect ratio in [3/4, 4/3]
    (log-uniform, as torchvision; fb.resnet.torch draws the ratio uniformly and swaps w/h with probability
    1/2, which is the same range), 10 attempts, then a centre crop as fallback; resized to `size x size`.
Small images' pad-and-crop and every horizontal flip run on the device, for both pipelines
(`resnet_jax.data.augment.DEVICE_OPERATIONS`). Both box crops are done in one PIL call (`Image.resize(..., box=...)`), which resamples only the chosen
region (anti-aliased), so the full-size resize of the paper's description is never materialised. JPEGs are
decoded at a reduced DCT scale (`Image.draft`) when the chosen region is at least twice the output size --
the same image to within interpolation differences, several times faster for large photographs.

Colour: `color_jitter` (fb.resnet.torch `ColorJitter`: brightness, contrast and saturation factors
1 + U(-v, v) applied in random order) and `pca_lighting` (AlexNet / fb.resnet.torch `Lighting`: add
eigvec @ (alpha * eigval) with alpha ~ N(0, alphastd), ImageNet eigen-decomposition below). fb.resnet.torch
applies them in [0, 1] floats without clipping; here they are applied in [0, 255] floats (the same
arithmetic scaled by 255) and the result is rounded and clipped to uint8.

Evaluation: `center_crop` (resize the shorter side to `resize`, take the central `crop x crop`; 256 -> 224
is fb.resnet.torch's and the ResNet papers' single-crop protocol; 320 -> 320 is the 320x320 test crop of
He et al. 2016 Table 5, see `resnet_jax.data.pipelines` for the config), and `ten_crop` (the 4 corners and
the centre of the resized image, plus their horizontal flips: fb.resnet.torch `TenCrop`, the 10-crop testing
of He et al. 2015).
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from resnet_jax.errors import UserError

# PCA of ImageNet RGB pixels in [0, 1] (AlexNet; fb.resnet.torch datasets/imagenet.lua `pca`).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))

INTERPOLATIONS = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC,
                  'lanczos': Image.Resampling.LANCZOS, 'nearest': Image.Resampling.NEAREST}

# What PIL raises for files that are not (complete) images.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, Image.DecompressionBombError)


class CorruptImageError(UserError):
  """An image that cannot be decoded. `config.input.corrupt_images` decides: 'fail' (raise) or 'skip'."""


def open_image(raw: Any, channels: int = 3) -> Image.Image:
  """A lazily decoded PIL image from encoded bytes (JPEG/PNG/...) or a uint8 H x W x C array.

  Only the header is read here; pixels are decoded by `load_image` or the crop functions below.
  Raises CorruptImageError if the data is not an image.
  """
  if isinstance(raw, Image.Image):
    return raw
  if isinstance(raw, (bytes, bytearray, memoryview, np.bytes_)):
    try:
      image = Image.open(io.BytesIO(bytes(raw)))
    except _DECODE_ERRORS as e:
      raise CorruptImageError(f'not a readable image ({type(e).__name__}: {e})') from None
    return image
  array = np.asarray(raw)
  if array.dtype != np.uint8 or array.ndim not in (2, 3):
    raise CorruptImageError(f'expected encoded bytes or a uint8 H x W x C array, got {array.dtype} {array.shape}')
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def _mode(channels: int) -> str:
  if channels == 3:
    return 'RGB'
  if channels == 1:
    return 'L'
  raise UserError(f'images must have 1 or 3 channels, got {channels}')


def _finish(image: Image.Image, channels: int) -> Image.Image:
  """Forces decoding (so truncated files fail here) and converts to RGB or L."""
  try:
    image.load()
    if image.mode != _mode(channels):
      image = image.convert(_mode(channels))
  except _DECODE_ERRORS as e:
    raise CorruptImageError(f'not a readable image ({type(e).__name__}: {e})') from None
  return image


def to_array(image: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[-1] != channels:
    raise CorruptImageError(f'decoded to {array.shape[-1]} channels, expected {channels}')
  return array


def decode(raw: Any, channels: int = 3) -> np.ndarray:
  """Full decode to uint8 H x W x C (RGB, or grey for channels=1)."""
  return to_array(_finish(open_image(raw, channels), channels), channels)


def _crop_resize(raw: Any, channels: int, box_fn, size: tuple[int, int], interpolation: str) -> Image.Image:
  """Decodes `raw` and resamples the box chosen by box_fn(width, height) to `size` (w, h) in one pass.

  The box is in the coordinates of the full-size image; a JPEG is decoded at the largest DCT reduction that
  keeps the box at least as large as `size`.
  """
  image = open_image(raw, channels)
  width, height = image.size
  if width < 1 or height < 1:
    raise CorruptImageError(f'image has size {width}x{height}')
  box = box_fn(width, height)
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  if image.format == 'JPEG' and box_w >= 2 * size[0] and box_h >= 2 * size[1]:
    try:
      image.draft(_mode(channels), (math.ceil(width * size[0] / box_w), math.ceil(height * size[1] / box_h)))
    except _DECODE_ERRORS as e:
      raise CorruptImageError(f'not a readable image ({type(e).__name__}: {e})') from None
  image = _finish(image, channels)
  if image.size != (width, height):  # decoded at a reduced scale
    sx, sy = image.size[0] / width, image.size[1] / height
    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
  try:
    return image.resize(size, INTERPOLATIONS[interpolation], box=tuple(float(b) for b in box))
  except _DECODE_ERRORS as e:
    raise CorruptImageError(f'cannot resample the image ({type(e).__name__}: {e})') from None


# ----------------------------------------------------------------------------------------------------------
# Crop boxes (x0, y0, x1, y1) in the coordinates of the full-size image.


def sample_scale_crop(rng: np.random.Generator, width: int, height: int, size: int,
                      scale_range: Sequence[int] = (256, 480)) -> tuple[float, float, float, float]:
  """He et al. 2015: shorter side resized to S ~ U{scale_range} (inclusive), random `size` crop."""
  short = int(rng.integers(scale_range[0], scale_range[1] + 1))
  scale = short / min(width, height)
  resized_w, resized_h = max(size, round(width * scale)), max(size, round(height * scale))
  x = int(rng.integers(0, resized_w - size + 1))
  y = int(rng.integers(0, resized_h - size + 1))
  sx, sy = width / resized_w, height / resized_h
  return (x * sx, y * sy, (x + size) * sx, (y + size) * sy)


def sample_inception_crop(rng: np.random.Generator, width: int, height: int,
                          area_range: Sequence[float] = (0.08, 1.0),
                          aspect_range: Sequence[float] = (3 / 4, 4 / 3),
                          attempts: int = 10) -> tuple[float, float, float, float]:
  """Random-sized crop box (torchvision RandomResizedCrop.get_params; fb.resnet.torch RandomSizedCrop)."""
  area = width * height
  log_ratio = (math.log(aspect_range[0]), math.log(aspect_range[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(area_range[0], area_range[1])
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * ratio)))
    h = int(round(math.sqrt(target_area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      x = int(rng.integers(0, width - w + 1))
      y = int(rng.integers(0, height - h + 1))
      return (x, y, x + w, y + h)
  # Fallback: the largest centred box whose aspect ratio is within range.
  in_ratio = width / height
  if in_ratio < aspect_range[0]:
    w, h = width, int(round(width / aspect_range[0]))
  elif in_ratio > aspect_range[1]:
    h, w = height, int(round(height * aspect_range[1]))
  else:
    w, h = width, height
  x, y = (width - w) // 2, (height - h) // 2
  return (x, y, x + w, y + h)


def center_box(width: int, height: int, resize: int, crop: int) -> tuple[float, float, float, float]:
  """The central `crop x crop` region after resizing the shorter side to `resize`, in original coordinates."""
  scale = resize / min(width, height)
  box_w, box_h = min(width, crop / scale), min(height, crop / scale)
  x0, y0 = (width - box_w) / 2, (height - box_h) / 2
  return (x0, y0, x0 + box_w, y0 + box_h)


# ----------------------------------------------------------------------------------------------------------
# Whole transforms on one image.


def random_crop_resize(raw: Any, rng: np.random.Generator, size: int, mode: str = 'inception', *,
                       channels: int = 3, scale_range: Sequence[int] = (256, 480),
                       area_range: Sequence[float] = (0.08, 1.0), aspect_range: Sequence[float] = (3 / 4, 4 / 3),
                       interpolation: str = 'bilinear') -> np.ndarray:
  """Training crop ('scale' or 'inception') of one image -> uint8 [size, size, channels]."""
  if mode == 'scale':
    box_fn = lambda w, h: sample_scale_crop(rng, w, h, size, scale_range)
  elif mode == 'inception':
    box_fn = lambda w, h: sample_inception_crop(rng, w, h, area_range, aspect_range)
  else:
    raise UserError(f"unknown crop mode {mode!r}; use scale or inception")
  return to_array(_crop_resize(raw, channels, box_fn, (size, size), interpolation), channels)


def center_crop(raw: Any, resize: int, crop: int, *, channels: int = 3,
                interpolation: str = 'bilinear') -> np.ndarray:
  """Shorter side -> `resize`, central `crop x crop` -> uint8 [crop, crop, channels]."""
  box_fn = lambda w, h: center_box(w, h, resize, crop)
  return to_array(_crop_resize(raw, channels, box_fn, (crop, crop), interpolation), channels)


def resize_shorter(raw: Any, resize: int, *, channels: int = 3, interpolation: str = 'bilinear') -> np.ndarray:
  """The whole image with its shorter side resized to `resize` (aspect ratio kept)."""
  def box_fn(w, h):
    return (0, 0, w, h)
  image = open_image(raw, channels)
  width, height = image.size
  scale = resize / min(width, height)
  out = (max(1, round(width * scale)), max(1, round(height * scale)))
  return to_array(_crop_resize(image, channels, box_fn, out, interpolation), channels)


def ten_crop_views(image: np.ndarray, crop: int) -> np.ndarray:
  """[10, crop, crop, C]: top-left, top-right, bottom-left, bottom-right, centre, then their mirror images.

  `image` is already resized (fb.resnet.torch: Scale(256) then TenCrop(224)).
  """
  height, width = image.shape[:2]
  if height < crop or width < crop:
    raise UserError(f'ten-crop of {crop} from a {height}x{width} image; resize the shorter side to >= {crop}')
  cy, cx = (height - crop) // 2, (width - crop) // 2
  corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), (cy, cx)]
  views = [image[y:y + crop, x:x + crop] for y, x in corners]
  views += [v[:, ::-1] for v in views]
  return np.stack(views)


def ten_crop(images: Sequence[Any], resize: int = 256, crop: int = 224, *, channels: int = 3,
             interpolation: str = 'bilinear') -> np.ndarray:
  """The 10 views of each image, example-major: uint8 [N * 10, crop, crop, C].

  Views of example i are rows [10 i, 10 i + 10); average the logits with
  `logits.reshape(N, 10, -1).mean(axis=1)` (`resnet_jax.data.pipelines.apply_multi_view` does this on
  device). fb.resnet.torch likewise sums the network outputs over the crops before taking the top-k.
  """
  out = [ten_crop_views(resize_shorter(raw, resize, channels=channels, interpolation=interpolation), crop)
         for raw in images]
  return np.concatenate(out) if out else np.zeros((0, crop, crop, channels), np.uint8)


def _grayscale(image: np.ndarray) -> np.ndarray:
  """Luma as fb.resnet.torch's `Grayscale` (0.299 R + 0.587 G + 0.114 B), shape [H, W, 1]."""
  return (image @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None]


def color_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4) -> np.ndarray:
  """fb.resnet.torch ColorJitter on float [0, 255] RGB: the three blends in random order."""
  image = image.astype(np.float32)
  for op in rng.permutation(3):
    if op == 0 and brightness > 0:
      image = image * (1 + rng.uniform(-brightness, brightness))
    elif op == 1 and contrast > 0:
      alpha = 1 + rng.uniform(-contrast, contrast)
      image = image * alpha + float(_grayscale(image).mean()) * (1 - alpha)
    elif op == 2 and saturation > 0:
      alpha = 1 + rng.uniform(-saturation, saturation)
      image = image * alpha + _grayscale(image) * (1 - alpha)
  return image


def pca_lighting(image: np.ndarray, rng: np.random.Generator, alphastd: float = 0.1) -> np.ndarray:
  """AlexNet-style PCA lighting noise (fb.resnet.torch `Lighting(0.1, eigval, eigvec)`) on [0, 255] floats."""
  image = image.astype(np.float32)
  if alphastd <= 0:
    return image
  alpha = rng.normal(0.0, alphastd, size=3)
  rgb = np.asarray(IMAGENET_EIGVEC, np.float64) @ (alpha * np.asarray(IMAGENET_EIGVAL, np.float64))
  return image + (255.0 * rgb).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_size(raw: Any) -> tuple[int, int]:
  """(width, height) from the header only."""
  return open_image(raw).size
