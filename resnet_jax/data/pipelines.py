"""Input pipelines: what the train loop and the evaluator iterate over.

Choosing a pipeline (`make_train_data`, `config.dataset.pipeline`)
  'device': the whole training split lives on the accelerators (small datasets: digits, CIFAR, SVHN) and is
    augmented inside jit (`DeviceResidentData` + `augment.SmallImageAugment`).
  'grain': examples are streamed from the source and decoded/augmented on the host by Grain workers
    (`streaming.StreamingTrainData`; ImageNet).
  'auto' (default): 'device' when the split's images share one shape and the split's uint8 size is at most
    `config.input.device_max_bytes`, else 'grain'.
  Both are one train-data interface, so the train loop never asks which it has: `pipeline` ('device' |
  'grain', the word config.dataset.pipeline uses), `image_shape`, `num_classes`, `num_examples`,
  `steps_per_epoch`, `normalization` ((mean, std), for the Classifier), `device_augment(key, uint8 images) ->
  float32 images` (the jitted part of augmentation), `program_inputs(step, num_steps)` (what the compiled program of those steps
  takes) and `batch_in_program(inputs, step, index)` (inside jit: the batch of a step), `get_state()` /
  `set_state()` (the stream position saved with checkpoints, `order.position_state`) and `close()`.
  Both follow the one data order of `order`: the same seed gives the same batches on either pipeline.

Device-resident training data (small datasets: digits, CIFAR, SVHN)
  The whole training split is held once on the accelerators as a uint8 array sharded over the `data` mesh
  axis (each device keeps 1/D of it, each process loads only its part). The batch for step `s` is a pure
  function of (seed, s) (`order.example_indices`). Inside jit each
  device picks the requested examples it holds and a `psum_scatter` hands every device its slice of the
  batch, so the batch sequence is identical on any number of devices and hosts, and a resumed run sees
  exactly the batches of an uninterrupted one. The per-step traffic is one batch, not the dataset.

Evaluation batches
  Every example is counted exactly once on any device count: the split is cut into global batches, the last
  one padded, and a `mask` marks real examples. Each process reads only its rows of each batch.
  `make_eval_batches` returns a re-iterable `streaming.EvalData` doing this with host preprocessing (resize +
  centre crop, or ten-crop, for variable-size images; none for fixed-size ones) and device prefetch.

Input options (`InputOptions`: every field with its default; `config.input.*` and a few of `config.augment` and
`config.dataset`, read with defaults so configs without them work). Evaluation protocols for ImageNet:
  - 224 single crop (He et al. 2015/2016, fb.resnet.torch): eval_resize=256, eval_crop=224 (the default).
  - 320 single crop (He et al. 2016 Table 5; the ResNeXt paper's "320/299" column): eval_resize=320,
    eval_crop=320. The paper gives only the crop size; resizing the shorter side to 320 and taking the central
    320 x 320 square is our reading (the network is fully convolutional with global pooling, so it accepts
    the larger input). eval_resize=366 (320 / 0.875) would be the other common convention.
  - 10-crop (He et al. 2015 Table 2/3, fb.resnet.torch -tenCrop): eval_crop_mode='ten' gives [B, 10, crop,
    crop, C] batches; average the logits over the views with `apply_multi_view`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional, Union

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax import parallel
from resnet_jax.data import augment as augment_lib
from resnet_jax.data import auto_augment as auto_augment_lib
from resnet_jax.data import host_augment
from resnet_jax.data import host_pipeline
from resnet_jax.data import normalization
from resnet_jax.data import order
from resnet_jax.data import streaming
from resnet_jax.data.sources import ExampleSource
from resnet_jax.errors import UserError


@dataclasses.dataclass
class DeviceResidentData:
  """A training split resident on the devices. `arrays` is the pytree to pass into jit."""
  arrays: dict[str, jax.Array]   # {'image': uint8 [N_pad, H, W, C], 'label': int32 [N_pad]}, sharded
  num_examples: int              # N, real examples (the rest is padding up to a multiple of the device count)
  global_batch: int
  seed: int
  mesh: Mesh
  # Set by make_train_data (None when built directly with from_arrays).
  normalization: Optional[tuple[Any, Any]] = None  # (mean, std): `data.normalization.for_run`
  image_shape: Optional[tuple[int, int, int]] = None
  num_classes: Optional[int] = None
  device_augment: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None
  repeats: int = 1               # config.repeated_augmentation (`order.repeated_positions`)

  pipeline = 'device'
  step: int = 0                  # the step whose batch the next program_inputs hands out

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.global_batch

  # The train-data interface (shared with streaming.StreamingTrainData) ----------------------------------------
  def program_inputs(self, step: int, num_steps: int) -> dict[str, jax.Array]:
    """What the compiled program of steps step .. step + num_steps - 1 takes: the resident split itself."""
    self.step = step + num_steps
    return self.arrays

  def batch_in_program(self, arrays: dict[str, jax.Array], step: jax.Array, index: Optional[jax.Array]):
    """Inside jit: the batch of `step` (`index`, the step's place in the program, is not needed)."""
    del index
    return self.batch(arrays, step)

  def get_state(self) -> dict[str, Any]:
    return order.position_state(self.step, self.seed, self.global_batch, self.num_examples)

  def set_state(self, state: dict[str, Any]) -> None:
    self.step = order.resume_step(state, self.seed, self.global_batch, self.num_examples)

  def close(self) -> None:
    """Nothing to stop: the split is freed with the arrays."""

  @classmethod
  def from_arrays(cls, arrays: dict[str, np.ndarray], mesh: Mesh, global_batch: int,
                  seed: int) -> 'DeviceResidentData':
    """Places a whole split ({'image': uint8 [N,H,W,C], 'label': int [N]}) on the devices of `mesh`.

    Every process passes the same arrays; each transfers only the rows its devices hold.
    """
    num_examples = len(arrays['label'])
    order.check_batch_fits(global_batch, num_examples)
    devices = mesh.devices.size
    padded = math.ceil(num_examples / devices) * devices
    per_device = padded // devices
    positions = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    start, stop = min(positions) * per_device, (max(positions) + 1) * per_device
    sharding = NamedSharding(mesh, P(parallel.DATA_AXIS))
    placed = {}
    for key, value in (('image', arrays['image']), ('label', arrays['label'].astype(np.int32))):
      local = value[start:min(stop, num_examples)]
      if len(local) < stop - start:
        local = np.concatenate([local, np.zeros((stop - start - len(local),) + value.shape[1:], value.dtype)])
      placed[key] = jax.make_array_from_process_local_data(sharding, local, (padded,) + value.shape[1:])
    return cls(arrays=placed, num_examples=num_examples, global_batch=global_batch, seed=seed, mesh=mesh)

  def batch_indices(self, step: jax.Array) -> jax.Array:
    """Dataset indices of the global batch at `step` (traceable): the one data order (`order`)."""
    return order.example_indices(self.seed, self.num_examples, order.batch_positions(step, self.global_batch, xp=jnp),
                                 jnp, self.repeats, self.global_batch)

  def batch(self, arrays: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
    """The global batch at `step`, sharded over `data`; call inside jit with `arrays` as an argument."""
    indices = self.batch_indices(step)
    devices = self.mesh.devices.size
    per_device_rows = arrays['label'].shape[0] // devices

    def gather_local(local_arrays, idx):
      shard = jax.lax.axis_index(parallel.DATA_AXIS)
      local_idx = idx - shard * per_device_rows
      mine = (local_idx >= 0) & (local_idx < per_device_rows)
      safe_idx = jnp.where(mine, local_idx, 0)
      out = {}
      for key, value in local_arrays.items():
        picked = jnp.take(value, safe_idx, axis=0)
        picked = jnp.where(mine.reshape((-1,) + (1,) * (value.ndim - 1)), picked, 0)
        # Exactly one device holds each example, so the sum is that example; sum in int32 (exact for uint8).
        out[key] = jax.lax.psum_scatter(picked.astype(jnp.int32), parallel.DATA_AXIS,
                                        scatter_dimension=0, tiled=True).astype(value.dtype)
      return out

    return jax.shard_map(gather_local, mesh=self.mesh,
                         in_specs=(P(parallel.DATA_AXIS), P()), out_specs=P(parallel.DATA_AXIS))(arrays, indices)


def apply_multi_view(apply_fn: Callable[[jax.Array], jax.Array], images: jax.Array) -> jax.Array:
  """Logits of `apply_fn` for [B, H, W, C] images, or the mean logits over views for [B, V, H, W, C] (the
  ten-crop batches of `make_eval_batches` with eval_crop_mode='ten'). Traceable; the batch axis keeps its
  sharding (B * V rows split over the same devices)."""
  if images.ndim == 5:
    batch, views = images.shape[:2]
    logits = apply_fn(images.reshape((batch * views,) + images.shape[2:]))
    return logits.reshape((batch, views) + logits.shape[1:]).mean(axis=1)
  return apply_fn(images)


# ----------------------------------------------------------------------------------------------------------
# Options and factories.

PIPELINES = ('auto', 'device', 'grain')


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """Every input option with its default, written once: configs/default.py builds its config sections from
  these defaults (`option_defaults`) and `input_options` reads a config back into this class. Field F is
  `config.input.F`, except those `SECTIONS` maps to another section."""
  pipeline: str = 'auto'               # dataset.pipeline: 'auto' | 'device' | 'grain' (module docstring)
  # augment.*: small images (device-resident, or 'pad_crop' on the host). He et al. 2015 Sec. 4.2: "4 pixels
  # are padded on each side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip".
  crop_padding: int = 4
  flip: bool = True
  # 'per_channel': (x - mean_c) / std_c with statistics of the training split (fb.resnet.torch);
  # 'per_pixel_mean': x - mean image, the "per-pixel mean subtracted" of He et al. 2015 Sec. 4.2;
  # 'imagenet': the published ImageNet statistics (see `normalization`).
  normalization: str = 'per_channel'
  # fb.resnet.torch normalises before padding, so padding shows the mean colour; False pads with black.
  pad_after_normalize: bool = True
  # Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of whole batches inside the jitted step, timm's
  # semantics (augment.mix_images): lambda ~ Beta(alpha, alpha), 0 turns each off (RSB A1 and torchvision's v2
  # recipe: mixup 0.2, cutmix 1.0; RSB A2/A3: 0.1, 1.0); mix_prob: how often a batch is mixed (timm --mixup-prob);
  # mix_switch_prob: CutMix rather than mixup when both are on (timm --mixup-switch-prob; torchvision 0.5).
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  mix_switch_prob: float = 0.5
  # Random erasing (Zhong et al. 2020) per example on the device, after normalisation (augment.erase_images):
  # timm's --reprob (train.py default 0; torchvision v2 recipe --random-erase 0.1), --remode ('pixel' timm's
  # default, 'rand', 'const' = torchvision's value 0) and --recount (boxes: randint(1, count), default 1).
  random_erase_prob: float = 0.0
  random_erase_mode: str = 'pixel'
  random_erase_count: int = 1
  # RandAugment (timm policy strings, e.g. 'rand-m9-mstd0.5-inc1': RSB A1/A2 'rand-m7-mstd0.5-inc1', torchvision
  # v2 recipe's TrivialAugmentWide: 'trivialaugment'), per example on the host (`auto_augment`); '' is off. A
  # fixed-size dataset that would stay on the device streams through the host instead (`choose_pipeline`).
  auto_augment: str = ''
  # input.*: large images (ImageNet) streamed through Grain, and the machinery.
  device_max_bytes: int = 2 * 1024**3  # 'auto' keeps a fixed-shape split on the devices up to this uint8 size
  # 'inception' (random-sized crop, fb.resnet.torch), 'scale' (He et al. 2015 Sec. 3.4), 'pad_crop' (small
  # images), 'none'; auto: pad_crop for fixed-size images, inception otherwise.
  train_crop: str = 'auto'
  image_size: int = 224                # training crop (inception / scale)
  scale_range: tuple[int, int] = (256, 480)  # shorter side of 'scale' (He et al. 2015 Sec. 3.4)
  area_range: tuple[float, float] = (0.08, 1.0)  # area fraction of 'inception' (fb.resnet.torch, torchvision)
  aspect_range: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio of 'inception' (the same)
  color_jitter: float = 0.0            # fb.resnet.torch: 0.4 (brightness, contrast, saturation)
  pca_lighting: float = 0.0            # fb.resnet.torch: 0.1 (alphastd of AlexNet's PCA lighting)
  interpolation: str = 'bilinear'      # 'bilinear' | 'bicubic' | 'lanczos' | 'nearest'
  # 'center' | 'ten' (10-crop) | 'none'; auto: none for fixed-size images, center otherwise.
  eval_crop_mode: str = 'auto'
  eval_resize: int = 256               # shorter side before the evaluation crop (fb.resnet.torch: 256 -> 224)
  eval_crop: int = 224                 # He et al. 2016 Table 5's 320 test: eval_resize=320, eval_crop=320
  num_workers: int = -1                # Grain worker processes (-1: CPU cores - 1, at most 16; 0: threads only)
  num_threads: int = 2                 # batches built concurrently per worker (PIL releases the GIL)
  eval_num_workers: int = -1           # the same for evaluation (-1: as num_workers)
  prefetch: int = 2                    # global batches kept transferred to the devices ahead of use
  corrupt_images: str = 'fail'         # 'fail': stop with the file's name; 'skip': log and skip it
  mean: Optional[tuple[float, ...]] = None  # per-channel statistics in [0, 255] overriding the computed ones
  std: Optional[tuple[float, ...]] = None
  stats_examples: int = 5000           # examples sampled to estimate mean/std when streaming

  # Options a config sets outside `config.input` (where configs have always had them); not a field.
  SECTIONS = {'pipeline': 'dataset', 'crop_padding': 'augment', 'flip': 'augment', 'normalization': 'augment',
              'pad_after_normalize': 'augment', 'mixup_alpha': 'augment', 'cutmix_alpha': 'augment',
              'mix_prob': 'augment', 'mix_switch_prob': 'augment', 'random_erase_prob': 'augment',
              'random_erase_mode': 'augment', 'random_erase_count': 'augment',
              'auto_augment': 'augment'}


def option_defaults(section: str) -> dict[str, Any]:
  """{field: default} of the InputOptions set in `config.<section>` ('dataset', 'augment' or 'input')."""
  return {field.name: field.default for field in dataclasses.fields(InputOptions)
          if InputOptions.SECTIONS.get(field.name, 'input') == section}


def default_num_workers() -> int:
  """Grain worker processes per host: one per CPU core but one (for the training loop), at most 16."""
  return max(1, min(16, (os.cpu_count() or 2) - 1))


def input_options(config) -> InputOptions:
  """The InputOptions of `config`; a field the config lacks (or sets to None) takes its default. Values get
  the type of the default (ranges: of its elements; mean/std: floats); negative worker counts are resolved."""
  values = {}
  for field in dataclasses.fields(InputOptions):
    value = _get(config, InputOptions.SECTIONS.get(field.name, 'input'), field.name, field.default)
    try:
      if field.default is None or isinstance(field.default, tuple):  # mean/std (None: computed), ranges
        element_type = float if field.default is None else type(field.default[0])
        value = None if value is None else tuple(element_type(element) for element in value)
      else:
        value = type(field.default)(value)
    except (TypeError, ValueError):
      section = InputOptions.SECTIONS.get(field.name, 'input')
      expected = (f'a list of {element_type.__name__}s' if field.default is None or isinstance(field.default, tuple)
                  else f'a {type(field.default).__name__}')
      raise UserError(f"config.{section}.{field.name}={value!r}: expected {expected}") from None
    values[field.name] = value
  workers = values['num_workers'] if values['num_workers'] >= 0 else default_num_workers()
  values['num_workers'] = workers
  values['eval_num_workers'] = workers if values['eval_num_workers'] < 0 else values['eval_num_workers']
  options = InputOptions(**values)
  _validate(options)
  batch_size = config.get('batch_size') if hasattr(config, 'get') else getattr(config, 'batch_size', None)
  if batch_size is not None and int(batch_size) % 2 and device_augmentation(options, 'none', None).mixes_labels:
    raise UserError(f"config.batch_size={batch_size} is odd, but mixup/CutMix (config.augment.mixup_alpha, "
                    "cutmix_alpha) pair every example with another one of the batch, as timm's Mixup, which "
                    "requires an even batch; use an even config.batch_size")
  return options


def _get(config, section: str, key: str, default: Any) -> Any:
  part = config.get(section) if hasattr(config, 'get') else getattr(config, section, None)
  if part is None:
    return default
  value = part.get(key, default) if hasattr(part, 'get') else getattr(part, key, default)
  return default if value is None else value


def _validate(options: InputOptions) -> None:
  choices = {'pipeline': PIPELINES, 'normalization': normalization.MODES,
             'corrupt_images': host_pipeline.CORRUPT_POLICIES,
             'train_crop': ('auto',) + host_pipeline.TRAIN_CROPS, 'interpolation': tuple(host_augment.INTERPOLATIONS),
             'eval_crop_mode': ('auto',) + host_pipeline.EVAL_CROPS}
  for key, allowed in choices.items():
    if getattr(options, key) not in allowed:
      raise UserError(f"unknown config.{InputOptions.SECTIONS.get(key, 'input')}.{key} {getattr(options, key)!r}; "
                      f"choose {', '.join(allowed)}")
  if options.image_size <= 0 or options.eval_crop <= 0 or options.eval_resize <= 0:
    raise UserError("config.input.image_size, eval_crop and eval_resize must be positive")
  if options.eval_resize < options.eval_crop:
    raise UserError(f"config.input.eval_resize={options.eval_resize} is smaller than eval_crop="
                    f"{options.eval_crop}; the crop is taken after resizing the shorter side, so use eval_resize >= "
                    "eval_crop (256/224 standard, 320/320 for the 320 crop of He et al. 2016)")
  if not 0 < options.scale_range[0] <= options.scale_range[1] or options.scale_range[0] < options.image_size:
    raise UserError(f"config.input.scale_range={options.scale_range} must be increasing and start at >= "
                    f"image_size ({options.image_size}), e.g. (256, 480)")
  if not 0 < options.area_range[0] <= options.area_range[1] <= 1:
    raise UserError(f"config.input.area_range={options.area_range} must satisfy 0 < min <= max <= 1, "
                    "e.g. (0.08, 1.0)")
  if not 0 < options.aspect_range[0] <= options.aspect_range[1]:
    raise UserError(f"config.input.aspect_range={options.aspect_range} must satisfy 0 < min <= max, "
                    "e.g. (0.75, 1.333)")
  if options.color_jitter < 0 or options.pca_lighting < 0:
    raise UserError("config.input.color_jitter and pca_lighting must be >= 0 (fb.resnet.torch: 0.4 and 0.1)")
  if options.num_threads < 1 or options.prefetch < 1:
    raise UserError("config.input.num_threads and prefetch must be >= 1")
  if options.crop_padding < 0:
    raise UserError(f"config.augment.crop_padding={options.crop_padding} must be >= 0")
  for name in ('mixup_alpha', 'cutmix_alpha'):
    if not getattr(options, name) >= 0:  # `not >=` refuses NaN too
      raise UserError(f"config.augment.{name}={getattr(options, name)} must be >= 0 (the Beta(alpha, alpha) "
                      "of its mixing weight; 0 turns it off; the recipes use 0.1 to 1.0)")
  for name in ('mix_prob', 'mix_switch_prob'):
    if not 0 <= getattr(options, name) <= 1:
      raise UserError(f"config.augment.{name}={getattr(options, name)} is a probability: use a value in [0, 1]")
  if not 0 <= options.random_erase_prob <= 1:
    raise UserError(f"config.augment.random_erase_prob={options.random_erase_prob} is a probability: use a value "
                    "in [0, 1] (0 = off; torchvision's v2 recipe 0.1)")
  if options.random_erase_mode not in augment_lib.ERASE_MODES:
    raise UserError(f"unknown config.augment.random_erase_mode {options.random_erase_mode!r}; choose "
                    f"{', '.join(augment_lib.ERASE_MODES)}")
  if options.random_erase_count < 1:
    raise UserError(f"config.augment.random_erase_count={options.random_erase_count} must be >= 1 (the most "
                    "boxes erased per image)")
  auto_augment_lib.parse_policy(options.auto_augment)  # a malformed policy string: UserError
  if options.auto_augment and options.pipeline == 'device':
    raise UserError(f"config.augment.auto_augment={options.auto_augment!r} runs per example on the host, which "
                    "the device-resident pipeline has no step for; set config.dataset.pipeline='grain' (or 'auto', "
                    "which streams such runs through the host)")
  if (options.mean is None) != (options.std is None):
    raise UserError("set both config.input.mean and config.input.std, or neither")
  if options.std is not None and min(options.std) <= 0:
    raise UserError(f"config.input.std={options.std} must be positive")


def _split_bytes(source: ExampleSource) -> Optional[int]:
  if source.image_shape is None:
    return None
  return len(source) * int(np.prod(source.image_shape))


def choose_pipeline(options: InputOptions, source: ExampleSource) -> str:
  """'device' or 'grain' for this training split (see the module docstring)."""
  size = _split_bytes(source)
  if options.auto_augment:
    return 'grain'  # RandAugment / TrivialAugment are host operations: never silently dropped (README)
  if options.pipeline == 'device':
    if size is None:
      raise UserError(f"{source.dataset}: images vary in size, so they cannot be held on the device; use the "
                      "streaming pipeline (config.dataset.pipeline='grain' or 'auto')")
    return 'device'
  if options.pipeline == 'grain':
    return 'grain'
  return 'device' if size is not None and size <= options.device_max_bytes else 'grain'


def resolve_train_crop(options: InputOptions, source: ExampleSource) -> str:
  if options.train_crop != 'auto':
    if options.train_crop in ('pad_crop', 'none') and source.image_shape is None:
      raise UserError(f"config.input.train_crop={options.train_crop!r} needs images of one size, but "
                      f"{source.dataset} {source.split!r} images vary; use 'inception' or 'scale'")
    return options.train_crop
  return 'pad_crop' if source.image_shape is not None else 'inception'


def resolve_eval_crop(options: InputOptions, source: ExampleSource) -> str:
  if options.eval_crop_mode != 'auto':
    if options.eval_crop_mode == 'none' and source.image_shape is None:
      raise UserError(f"config.input.eval_crop_mode='none' needs images of one size, but {source.dataset} "
                      f"{source.split!r} images vary; use 'center' or 'ten'")
    return options.eval_crop_mode
  fixed_train = source.image_shape is not None and options.train_crop in ('auto', 'pad_crop', 'none')
  return 'none' if fixed_train else 'center'


def _read_all(source: ExampleSource, corrupt_images: str) -> dict[str, np.ndarray]:
  """The whole split as arrays; corrupt images fail loudly or are dropped with a log line, by policy."""
  try:
    arrays = source.read_all()
    kept = np.arange(len(arrays['label']))
  except host_augment.CorruptImageError:
    decode = lambda raw, row: host_pipeline.fixed_image(raw, source.channels, source.image_shape)
    images, labels, kept = [], [], []
    for start in range(0, len(source), 1024):
      chunk = np.arange(start, min(start + 1024, len(source)))
      decoded, chunk_labels = host_pipeline.transform_rows(source, chunk, decode, corrupt_images)
      for index, image, label in zip(chunk, decoded, chunk_labels):
        if image is not None:
          images.append(image), labels.append(label), kept.append(index)
    logging.warning('%s %r: skipped %d corrupt image(s) of %d', source.dataset, source.split,
                    len(source) - len(images), len(source))
    if not images:
      raise UserError(f"{source.dataset} {source.split!r}: every image is corrupt") from None
    arrays = {'image': np.stack(images), 'label': np.asarray(labels, np.int32)}
  host_pipeline.check_labels(source, kept, np.asarray(arrays['label']))
  return arrays


def make_train_data(config, mesh: Mesh, train_source: ExampleSource, *,
                    start_step: int = 0) -> Union[DeviceResidentData, 'streaming.StreamingTrainData']:
  """The training input for `config`: device-resident or streamed (see the module docstring).

  Both results are the train-data interface of the module docstring. Streaming data starts at `start_step` (or
  use `set_state`).
  """
  options = input_options(config)
  global_batch, seed = int(config.batch_size), int(config.seed)
  parallel.check_batch_divisible(global_batch, mesh)
  kind = choose_pipeline(options, train_source)
  repeats = config.get('repeated_augmentation', 1)
  order.check_repeats(repeats, global_batch)
  if kind == 'device':
    arrays = _read_all(train_source, options.corrupt_images)
    mean, std = normalization.for_run(options, train_source, seed, arrays['image'])
    data = DeviceResidentData.from_arrays(arrays, mesh, global_batch, seed)
    data.normalization = (mean, std)
    data.image_shape = tuple(arrays['image'].shape[1:])
    data.num_classes = train_source.num_classes
    data.device_augment = device_augmentation(options, 'pad_crop', mean, std)
    data.repeats = repeats
    return data

  crop = resolve_train_crop(options, train_source)
  if options.pca_lighting > 0 and train_source.channels != 3:
    raise UserError("config.input.pca_lighting needs RGB images; set it to 0 for grey images")
  mean, std = normalization.for_run(options, train_source, seed)
  transform = host_pipeline.TrainTransform(
      crop=crop, image_size=options.image_size, channels=train_source.channels,
      image_shape=train_source.image_shape, scale_range=options.scale_range, area_range=options.area_range,
      aspect_range=options.aspect_range, color_jitter=options.color_jitter, pca_lighting=options.pca_lighting,
      interpolation=options.interpolation, auto_augment=options.auto_augment,
      auto_augment_fill=auto_augment_lib.fill_colour(mean, train_source.channels))
  return streaming.StreamingTrainData(
      train_source, mesh, global_batch, seed, transform, device_augmentation(options, crop, mean, std),
      normalization=(mean, std), num_workers=options.num_workers, num_threads=options.num_threads, prefetch=options.prefetch,
      corrupt_images=options.corrupt_images, start_step=start_step, repeats=repeats)


def device_augmentation(options: InputOptions, crop: str, mean: Any,
                        std: Any = None) -> augment_lib.SmallImageAugment:
  """The device operations of training for either pipeline: pad-and-crop for crop 'pad_crop' (the device-resident
  pipeline always), the flip, random erasing (its fill given after normalisation by `mean`, `std`) and
  mixup/CutMix. pad_after_normalize pads the centred image with zeros (exact for per-channel and per-pixel means)."""
  padding = options.crop_padding if crop == 'pad_crop' else 0
  center = mean if options.pad_after_normalize and padding else None
  return augment_lib.SmallImageAugment(crop_padding=padding, flip=options.flip, center=center,
                                       mixup_alpha=options.mixup_alpha, cutmix_alpha=options.cutmix_alpha,
                                       mix_prob=options.mix_prob, mix_switch_prob=options.mix_switch_prob,
                                       random_erase_prob=options.random_erase_prob,
                                       random_erase_mode=options.random_erase_mode,
                                       random_erase_count=options.random_erase_count,
                                       **_erasing_normalization(options, mean, std))


def _erasing_normalization(options: InputOptions, mean: Any, std: Any) -> dict[str, Any]:
  # Only random erasing reads the statistics; without it the augmentation (a static part of the compiled step)
  # stays the same object for every dataset.
  if options.random_erase_prob == 0:
    return {}
  return {'mean': (0.0,) if mean is None else mean, 'std': (1.0,) if std is None else std}


def make_eval_batches(config, mesh: Mesh, eval_source: ExampleSource, *,
                      limit: Optional[int] = None) -> 'streaming.EvalData':
  """A re-iterable pass over `eval_source` in padded, masked global batches of config.eval_batch_size
  (rounded up to a multiple of the device count). With eval_crop_mode='ten', 'image' is
  [batch, 10, crop, crop, C]."""
  if limit is not None and limit <= 0:
    raise UserError(f"the number of evaluation examples to use must be positive, got {limit} (--limit)")
  options = input_options(config)
  crop = resolve_eval_crop(options, eval_source)
  if crop == 'none' and eval_source.image_shape is None:
    raise UserError(f"{eval_source.dataset}: evaluation images vary in size; set config.input.eval_crop_mode "
                    "to 'center' or 'ten'")
  transform = host_pipeline.EvalTransform(crop=crop, resize=options.eval_resize, crop_size=options.eval_crop,
                                          channels=eval_source.channels, image_shape=eval_source.image_shape,
                                          interpolation=options.interpolation)
  # Fixed-size images need no decoding work worth a worker process.
  workers = 0 if crop == 'none' else options.eval_num_workers
  batch = int(config.get('eval_batch_size', config.batch_size) if hasattr(config, 'get') else config.eval_batch_size)
  return streaming.EvalData(eval_source, mesh, batch, transform, num_workers=workers,
                            num_threads=options.num_threads, prefetch=options.prefetch,
                            corrupt_images=options.corrupt_images, limit=limit)
