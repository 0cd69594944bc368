"""RandAugment and TrivialAugmentWide: per-example image operations on the host, with PIL. No JAX.

Policies (`config.augment.auto_augment`; '' turns augmentation policies off)
  'rand-m9-mstd0.5-inc1' and the like: RandAugment (Cubuk et al. 2020) as timm writes it
    (timm/data/auto_augment.py `rand_augment_transform`): after 'rand', keys joined by '-':
      m<float>    magnitude in [0, 10] (default 10)       n<int>   operations per image (default 2)
      p<float>    probability each chosen operation runs (default 0.5)
      mstd<float> standard deviation of the magnitude noise (default 0; above 100: uniform in [0, m])
      mmax<float> upper clip of the noisy magnitude, in [0, 10] (default 10)
      inc1        the 'increasing' operation list (stronger images for larger m); leave it out for timm's
                  original list. timm reads the value as bool(str), so its 'inc0' also turns the list on; we
                  refuse 'inc0' rather than silently disagree with either reading.
    Operations are drawn n times uniformly with replacement (timm `RandAugment.__call__`). timm's 'w' (op
    weights) and 't' (op set) keys are not offered. Each call draws m' ~ N(m, mstd) (or U[0, m]), clipped to
    [0, mmax]; level = m' / 10 (timm `AugmentOp.__call__`); signed operations flip sign with probability 1/2.
    Fill of the geometric operations: round(255 * mean), the run's per-channel normalisation mean (timm
    transforms_factory passes img_mean the same way).
  'trivialaugment': TrivialAugmentWide (Mueller & Hutter 2021) as torchvision writes it
    (torchvision/transforms/autoaugment.py `TrivialAugmentWide`): one operation per image, uniform over 14, at a
    magnitude bin uniform over 31; signed operations negated with probability 1/2; fill 0 (torchvision's default
    `fill=None`).

Each PIL operation is written once (`OPERATIONS`); the policies differ only in how a level becomes the
operation's argument (`RAND_ARGUMENTS`, `TRIVIAL_ARGUMENTS`). The random draws come from the example's NumPy
generator, which the host pipeline derives from (seed, stream position), so a resumed run draws the same values.
Geometric operations resample with the run's interpolation (config.input.interpolation; PIL's affine transforms
have no Lanczos, so 'lanczos' uses bicubic); timm's default 'random' choice between bilinear and bicubic is not
offered.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from resnet_jax.errors import UserError

#: timm's _LEVEL_DENOM: magnitudes run from 0 to 10 and the level is magnitude / 10.
MAX_MAGNITUDE = 10.0
#: timm: an mstd above 100 means "uniform in [0, m]" instead of Gaussian noise.
UNIFORM_NOISE_ABOVE = 100.0
TRIVIAL_POLICY = 'trivialaugment'
TRIVIAL_BINS = 31  # torchvision TrivialAugmentWide(num_magnitude_bins=31)

_AFFINE_RESAMPLING = {'bilinear': Image.Resampling.BILINEAR, 'bicubic': Image.Resampling.BICUBIC,
                      'lanczos': Image.Resampling.BICUBIC, 'nearest': Image.Resampling.NEAREST}


@dataclasses.dataclass(frozen=True)
class Context:
  """What a geometric operation needs besides its argument: the fill colour and the resampling filter."""
  fill: Any = 0
  resample: Image.Resampling = Image.Resampling.BILINEAR


def _affine(image: Image.Image, matrix: tuple[float, ...], context: Context) -> Image.Image:
  # PIL maps each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f); timm's shear and
  # translate are these matrices about the top-left corner.
  return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=context.resample,
                         fillcolor=context.fill)


def _solarize_add(image: Image.Image, add: int, context: Context, threshold: int = 128) -> Image.Image:
  # timm solarize_add: pixels below the threshold get `add` more, saturating at 255.
  table = [min(255, value + add) if value < threshold else value for value in range(256)]
  return image.point(table * len(image.getbands()))


def _posterize(image: Image.Image, bits: int, context: Context) -> Image.Image:
  if bits >= 8:
    return image
  if bits <= 0:
    # timm's original Posterize keeps int(4 level) bits, 0 at low levels: every pixel 0 (what older Pillow's
    # posterize(image, 0) gave; Pillow >= 10 refuses 0 bits).
    return Image.new(image.mode, image.size, 0)
  return ImageOps.posterize(image, int(bits))


#: name -> function(PIL image, argument, Context) -> PIL image: each operation of both policies, once.
OPERATIONS: dict[str, Callable[[Image.Image, Any, Context], Image.Image]] = {
    'Identity': lambda image, _, context: image,
    'AutoContrast': lambda image, _, context: ImageOps.autocontrast(image),
    'Equalize': lambda image, _, context: ImageOps.equalize(image),
    'Invert': lambda image, _, context: ImageOps.invert(image),
    'Rotate': lambda image, degrees, context: image.rotate(degrees, resample=context.resample,
                                                           fillcolor=context.fill),
    'Posterize': _posterize,
    'Solarize': lambda image, threshold, context: ImageOps.solarize(image, threshold),
    'SolarizeAdd': _solarize_add,
    'Color': lambda image, factor, context: ImageEnhance.Color(image).enhance(factor),
    'Contrast': lambda image, factor, context: ImageEnhance.Contrast(image).enhance(factor),
    'Brightness': lambda image, factor, context: ImageEnhance.Brightness(image).enhance(factor),
    'Sharpness': lambda image, factor, context: ImageEnhance.Sharpness(image).enhance(factor),
    'ShearX': lambda image, factor, context: _affine(image, (1, factor, 0, 0, 1, 0), context),
    'ShearY': lambda image, factor, context: _affine(image, (1, 0, 0, factor, 1, 0), context),
    'TranslateX': lambda image, pixels, context: _affine(image, (1, 0, pixels, 0, 1, 0), context),
    'TranslateY': lambda image, pixels, context: _affine(image, (1, 0, 0, 0, 1, pixels), context),
}


def _signed(value: float, rng: np.random.Generator) -> float:
  """timm `_randomly_negate` / torchvision's signed magnitudes: the sign flips with probability 1/2."""
  return -value if rng.random() < 0.5 else value


# RandAugment: level in [0, 1] (magnitude / 10) -> (operation, argument), timm's `*_level_to_arg` functions.
# Each entry: (operation, function(level, rng, image size (width, height)) -> argument).
_ENHANCE = lambda level, rng, size: 0.1 + 1.8 * level                              # _enhance_level_to_arg
_ENHANCE_INCREASING = lambda level, rng, size: max(0.1, 1.0 + _signed(0.9 * level, rng))
_SHEAR = lambda level, rng, size: _signed(0.3 * level, rng)
_NONE = lambda level, rng, size: None
RAND_ARGUMENTS: dict[str, tuple[str, Callable[[float, np.random.Generator, tuple[int, int]], Any]]] = {
    'AutoContrast': ('AutoContrast', _NONE),
    'Equalize': ('Equalize', _NONE),
    'Invert': ('Invert', _NONE),
    'Rotate': ('Rotate', lambda level, rng, size: _signed(30.0 * level, rng)),
    'Posterize': ('Posterize', lambda level, rng, size: int(4 * level)),
    'PosterizeIncreasing': ('Posterize', lambda level, rng, size: 4 - int(4 * level)),
    'Solarize': ('Solarize', lambda level, rng, size: min(256, int(256 * level))),
    'SolarizeIncreasing': ('Solarize', lambda level, rng, size: 256 - min(256, int(256 * level))),
    'SolarizeAdd': ('SolarizeAdd', lambda level, rng, size: min(128, int(110 * level))),
    'Color': ('Color', _ENHANCE),
    'ColorIncreasing': ('Color', _ENHANCE_INCREASING),
    'Contrast': ('Contrast', _ENHANCE),
    'ContrastIncreasing': ('Contrast', _ENHANCE_INCREASING),
    'Brightness': ('Brightness', _ENHANCE),
    'BrightnessIncreasing': ('Brightness', _ENHANCE_INCREASING),
    'Sharpness': ('Sharpness', _ENHANCE),
    'SharpnessIncreasing': ('Sharpness', _ENHANCE_INCREASING),
    'ShearX': ('ShearX', _SHEAR),
    'ShearY': ('ShearY', _SHEAR),
    # timm translate_pct 0.45 of the image's width / height (_translate_rel_level_to_arg).
    'TranslateXRel': ('TranslateX', lambda level, rng, size: _signed(0.45 * level, rng) * size[0]),
    'TranslateYRel': ('TranslateY', lambda level, rng, size: _signed(0.45 * level, rng) * size[1]),
}
#: timm _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS, in timm's order.
RAND_OPERATIONS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
                   'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
                   'TranslateYRel')
RAND_INCREASING_OPERATIONS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                              'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                              'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
                              'TranslateYRel')


def _bins(start: float, stop: float) -> np.ndarray:
  return np.linspace(start, stop, TRIVIAL_BINS)


_ENHANCE_BINS = _bins(0.0, 0.99)
#: TrivialAugmentWide's augmentation space (torchvision `_augmentation_space`): operation -> (its 31 magnitudes
#: or None for none, signed, magnitude -> the operation's argument). The enhance factors are 1 + magnitude.
#: Shear: torchvision >= 0.13 shears by atan(magnitude) about the top-left corner, i.e. the PIL factor is the
#: magnitude itself (earlier releases used degrees(magnitude) about the centre; the modern reading is taken).
#: Translate: int(magnitude) pixels (torchvision moves the content by +magnitude, PIL's matrix by -magnitude: the
#: sign is a fair coin either way). Posterize: 8 - round(bin / 5) bits (8 .. 2). Solarize: linspace(255, 0), the
#: threshold torchvision's TrivialAugmentWide uses (the reference notes of this project say 256; torchvision's
#: `_augmentation_space` reads 255.0, and at 256 vs 255 only pure-white pixels differ).
TRIVIAL_ARGUMENTS: dict[str, tuple[Optional[np.ndarray], bool, Callable[[float], Any]]] = {
    'Identity': (None, False, lambda magnitude: None),
    'ShearX': (_bins(0.0, 0.99), True, float),
    'ShearY': (_bins(0.0, 0.99), True, float),
    'TranslateX': (_bins(0.0, 32.0), True, int),
    'TranslateY': (_bins(0.0, 32.0), True, int),
    'Rotate': (_bins(0.0, 135.0), True, float),
    'Brightness': (_ENHANCE_BINS, True, lambda magnitude: 1.0 + magnitude),
    'Color': (_ENHANCE_BINS, True, lambda magnitude: 1.0 + magnitude),
    'Contrast': (_ENHANCE_BINS, True, lambda magnitude: 1.0 + magnitude),
    'Sharpness': (_ENHANCE_BINS, True, lambda magnitude: 1.0 + magnitude),
    'Posterize': (8 - np.round(np.arange(TRIVIAL_BINS) / ((TRIVIAL_BINS - 1) / 6)).astype(int), False, int),
    'Solarize': (_bins(255.0, 0.0), False, float),
    'AutoContrast': (None, False, lambda magnitude: None),
    'Equalize': (None, False, lambda magnitude: None),
}
TRIVIAL_OPERATIONS = tuple(TRIVIAL_ARGUMENTS)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A parsed `config.augment.auto_augment` (module docstring). kind: 'rand' or 'trivialaugment'."""
  kind: str
  magnitude: float = MAX_MAGNITUDE
  num_operations: int = 2
  probability: float = 0.5
  magnitude_std: float = 0.0
  magnitude_max: float = MAX_MAGNITUDE
  increasing: bool = False

  @property
  def operations(self) -> tuple[str, ...]:
    if self.kind == TRIVIAL_POLICY:
      return TRIVIAL_OPERATIONS
    return RAND_INCREASING_OPERATIONS if self.increasing else RAND_OPERATIONS

  def noisy_magnitude(self, rng: np.random.Generator) -> float:
    """timm AugmentOp: m' ~ N(m, mstd), or U[0, m] for mstd > 100, clipped to [0, mmax]."""
    magnitude = self.magnitude
    if self.magnitude_std > UNIFORM_NOISE_ABOVE:
      magnitude = rng.uniform(0.0, magnitude)
    elif self.magnitude_std > 0:
      magnitude = rng.normal(magnitude, self.magnitude_std)
    return min(max(0.0, magnitude), self.magnitude_max)


_RAND_KEYS = {'m': 'magnitude', 'n': 'num_operations', 'p': 'probability', 'mstd': 'magnitude_std',
              'mmax': 'magnitude_max', 'inc': 'increasing'}


def _policy_error(text: str, problem: str) -> UserError:
  return UserError(f"config.augment.auto_augment={text!r}: {problem}; write RandAugment as timm does, e.g. "
                   f"'rand-m9-mstd0.5-inc1' (keys m, n, p, mstd, mmax, inc1), or {TRIVIAL_POLICY!r}, or '' for none")


@functools.lru_cache(maxsize=64)
def parse_policy(text: str) -> Optional[Policy]:
  """The Policy of a policy string ('' -> None); a malformed string, an unknown key or a value out of range
  raises UserError."""
  text = str(text).strip()
  if not text:
    return None
  if text == TRIVIAL_POLICY:
    return Policy(kind=TRIVIAL_POLICY)
  parts = text.split('-')
  if parts[0] != 'rand':
    raise _policy_error(text, f"unknown policy {parts[0]!r}")
  values: dict[str, Any] = {}
  for part in parts[1:]:
    match = re.fullmatch(r'([a-z]+)(\d+(?:\.\d*)?|\.\d+)', part)
    if match is None:
      raise _policy_error(text, f"{part!r} is not a key followed by a number")
    key, value = match.groups()
    if key not in _RAND_KEYS:
      raise _policy_error(text, f"unknown key {key!r}")
    if _RAND_KEYS[key] in values:
      raise _policy_error(text, f"key {key!r} is given twice")
    if key == 'inc':
      if value != '1':
        raise _policy_error(text, f"'inc{value}': timm reads any value as on (even inc0); write inc1 for the "
                                  "increasing operations or leave the key out")
      values['increasing'] = True
    elif key == 'n':
      if not value.isdigit() or int(value) < 1:
        raise _policy_error(text, f"n{value}: the number of operations per image must be a whole number >= 1")
      values['num_operations'] = int(value)
    else:
      values[_RAND_KEYS[key]] = float(value)
  policy = Policy(kind='rand', **values)
  if not 0 <= policy.magnitude_max <= MAX_MAGNITUDE:
    raise _policy_error(text, f"mmax{policy.magnitude_max:g} is outside [0, 10] (levels above 10 give "
                              "posterize fewer than 0 bits)")
  if not 0 <= policy.magnitude <= MAX_MAGNITUDE:
    raise _policy_error(text, f"magnitude m{policy.magnitude:g} is outside [0, 10]")
  if not 0 <= policy.probability <= 1:
    raise _policy_error(text, f"p{policy.probability:g} is a probability: use a value in [0, 1]")
  return policy


def fill_colour(mean: Any, channels: int) -> tuple[int, ...]:
  """round(255 * mean) per channel from the run's normalisation mean (in [0, 255]; a per-pixel mean image is
  averaged over its pixels), as timm's img_mean."""
  mean = np.asarray(mean, np.float64)
  if mean.ndim > 1:
    mean = mean.reshape(-1, mean.shape[-1]).mean(axis=0)
  return tuple(int(min(255, round(float(value)))) for value in np.broadcast_to(mean, (channels,)))


def apply_operation(image: Image.Image, name: str, argument: Any, context: Context = Context()) -> Image.Image:
  return OPERATIONS[name](image, argument, context)


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if channels == 1 else array


def _context(image: Image.Image, fill: Sequence[int], interpolation: str) -> Context:
  fill = tuple(int(value) for value in fill)
  return Context(fill=fill[0] if image.mode == 'L' else fill, resample=_AFFINE_RESAMPLING[interpolation])


def augment(policy: Policy, image: np.ndarray, rng: np.random.Generator, *, fill: Sequence[int] = (128, 128, 128),
            interpolation: str = 'bilinear') -> np.ndarray:
  """The policy applied to one uint8 image [H, W, C] with the example's generator; uint8 [H, W, C] back.

  Draw order (fixed, so a resume replays it): RandAugment: the n operation indices, then per operation its
  apply draw, magnitude noise and sign; TrivialAugment: the operation, its bin, its sign.
  """
  channels = image.shape[-1]
  pil_image = _to_pil(np.asarray(image, np.uint8))
  if policy.kind == TRIVIAL_POLICY:
    name = TRIVIAL_OPERATIONS[rng.integers(len(TRIVIAL_OPERATIONS))]
    magnitudes, signed, to_argument = TRIVIAL_ARGUMENTS[name]
    magnitude = 0.0 if magnitudes is None else float(magnitudes[rng.integers(TRIVIAL_BINS)])
    if signed:
      magnitude = _signed(magnitude, rng)
    context = _context(pil_image, (0,) * channels, interpolation)  # torchvision's fill=None is black
    return _from_pil(apply_operation(pil_image, name, to_argument(magnitude), context), channels)
  context = _context(pil_image, fill, interpolation)
  operations = policy.operations
  for index in rng.integers(len(operations), size=policy.num_operations):
    # timm AugmentOp: `if self.prob < 1.0 and random.random() > self.prob: return img`.
    if policy.probability < 1.0 and rng.random() > policy.probability:
      continue
    level = policy.noisy_magnitude(rng) / MAX_MAGNITUDE
    name, to_argument = RAND_ARGUMENTS[operations[index]]
    pil_image = apply_operation(pil_image, name, to_argument(level, rng, pil_image.size), context)
  return _from_pil(pil_image, channels)
