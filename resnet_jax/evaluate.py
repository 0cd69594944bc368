"""Evaluation: exact test accuracy on any device count, `predict()` for notebooks, and `--mode eval`.

Every example of the split counts exactly once: batches are padded to the global batch size and a mask
removes the padding from the sums (big_vision's approach; the Flax example drops the remainder).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import parallel
from resnet_jax import storage
from resnet_jax import workdir as workdir_lib
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError
from resnet_jax.losses import cross_entropy

#: Where `--mode eval` appends its results, one JSON object per line.
EVAL_RESULTS_FILE = 'eval_results.jsonl'


def compiled_per_model(build: Callable[[Any], Callable]) -> Callable[[Any], Callable]:
  """Caches `build(model)`, a jitted function of `model`, keyed by the model itself: Flax modules compare by
  their attributes, so equal models share one compilation and models that merely hash alike do not. The 16 most
  recently used are kept; a model with unhashable attributes (e.g. an array) gets an uncached function."""
  cached = functools.lru_cache(maxsize=16)(build)

  @functools.wraps(build)
  def get(model):
    try:
      hash(model)
    except TypeError:
      return build(model)
    return cached(model)

  return get


class Evaluator:
  """Jitted masked evaluation of a Classifier over padded, masked global batches (pipelines.make_eval_batches).

  Multi-view batches ('image' [B, views, H, W, C], e.g. ten-crop) are scored by the mean of the views' logits.
  """

  def __init__(self, model, mesh: jax.sharding.Mesh):
    self.model = model
    self.mesh = mesh
    replicated = parallel.replicated(mesh)

    @jax.jit
    def eval_step(variables, batch, totals):
      logits = pipelines.apply_multi_view(lambda images: model.apply(variables, images, train=False),
                                          batch['image'])
      mask = batch['mask'].astype(jnp.float32)
      loss = cross_entropy(logits, batch['label'])
      correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
      return {'loss': totals['loss'] + jnp.sum(loss * mask), 'correct': totals['correct'] + jnp.sum(correct * mask),
              'count': totals['count'] + jnp.sum(mask)}

    self._eval_step = eval_step
    self._zeros = lambda: jax.device_put({'loss': jnp.float32(0), 'correct': jnp.float32(0),
                                          'count': jnp.float32(0)}, replicated)

  def evaluate(self, variables, eval_data: Iterable[dict[str, jax.Array]]) -> dict[str, float]:
    """Returns test_accuracy (fraction), test_error, test_loss and num_examples over one pass of eval_data."""
    totals = self._zeros()
    for batch in eval_data:
      totals = self._eval_step(variables, batch, totals)
    totals = parallel.fetch(totals)
    count = float(totals['count'])
    if count == 0:
      raise UserError('the evaluation split is empty')
    accuracy = float(totals['correct']) / count
    return {'test_accuracy': accuracy, 'test_error': 1.0 - accuracy,
            'test_loss': float(totals['loss']) / count, 'num_examples': int(count)}


def predict(model, variables, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Float32 logits [N, classes] for `images_uint8` (N x H x W x C raw pixels, 0..255), on the local devices.

  `model` is the Classifier of a run (from `resnet_jax.checkpoints.load`): it normalises raw pixels itself, so
  the images are what the run was trained on: uint8 (or any integer or float array of values in 0..255).
  Images scaled to [0, 1] (torchvision's `ToTensor`), channels-first (N x C x H x W) or with another channel
  count than the run's are refused with a ValueError saying what was expected: they would give logits, wrong
  ones. No images give an empty [0, classes] array.
  """
  images = check_images(model, images_uint8)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
  apply = _jitted_apply(model)
  devices = jax.local_devices()
  # No larger than the input (rounded up to the devices): padding 5 images to a batch of 1000 computes 1000.
  batch_size = min(int(batch_size), -(-len(images) // len(devices)) * len(devices))
  batch_size = max(len(devices), batch_size - batch_size % len(devices))
  if not len(images):
    logits = jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
    return np.zeros((0,) + logits.shape[1:], np.float32)
  mesh = parallel.make_mesh(devices)
  sharding = parallel.batch_sharding(mesh)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    logits = apply(variables, jax.device_put(chunk, sharding))
    outputs.append(np.asarray(logits)[:batch_size - pad])
  return np.concatenate(outputs).astype(np.float32)


def check_images(model, images_uint8) -> np.ndarray:
  """`images_uint8` as an array `predict` can classify, or a ValueError naming what was expected.

  The pixels must be raw values in 0..255, as training fed them (the Classifier normalises them itself). A float
  array whose values all lie in [0, 1] and are not all whole numbers is an image scaled to [0, 1]: refused, not
  rescaled, since a dark image in 0..255 can also lie in [0, 1].
  """
  images = np.asarray(images_uint8)
  expected = 'N x H x W x C raw pixels (uint8, values 0..255)'
  if images.ndim != 4:
    raise ValueError(f'images must be {expected}, got shape {images.shape}')
  if images.dtype == bool or not (np.issubdtype(images.dtype, np.integer) or
                                  np.issubdtype(images.dtype, np.floating)):
    raise ValueError(f'images must be {expected}, got dtype {images.dtype}')
  if images.size:
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
      raise ValueError(f'images hold NaN or infinite values; expected {expected}')
    low, high = images.min(), images.max()
    if low < 0 or high > 255:
      raise ValueError(f'images have values in [{low:g}, {high:g}]; expected {expected}')
    if (np.issubdtype(images.dtype, np.floating) and high <= 1 and
        not np.array_equal(images, np.round(images))):
      raise ValueError('images look scaled to [0, 1] (torchvision ToTensor style); predict takes raw pixels '
                       f'in 0..255 as the run was trained on: pass (images * 255).round().astype(np.uint8)')
  mean = getattr(model, 'mean', None)  # a Classifier: one normalisation value per channel (or per pixel)
  if isinstance(model, classifier.Classifier) and np.ndim(mean):
    channels = np.shape(mean)[-1]
    if images.shape[-1] != channels:
      layout = (f'; they look channels-first (N x C x H x W): pass images.transpose(0, 2, 3, 1)'
                if images.shape[1] == channels else '')
      raise ValueError(f'images of shape {images.shape} have {images.shape[-1]} channels, the model takes '
                       f'{channels} (N x H x W x {channels}){layout}')
    if np.ndim(mean) == 3 and images.shape[1:3] != np.shape(mean)[:2]:  # the per-pixel mean image of the run
      raise ValueError(f'images of shape {images.shape}: the model subtracts a per-pixel mean image of '
                       f'{np.shape(mean)[0]} x {np.shape(mean)[1]}; pass images of that size')
  return images


@compiled_per_model
def _jitted_apply(model):
  return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def evaluate_checkpoint(workdir: str, step: Optional[int] = None, config=None) -> dict[str, float]:
  """`--mode eval`: evaluates a checkpoint of `workdir` on its eval split, prints and records the result.

  The record is appended to `workdir/eval_results.jsonl` with the checkpoint step.
  """
  loaded = checkpoints.load(workdir, step=step, ema=None if config is None else config.ema.use)
  with workdir_lib.locked(workdir, 'evaluation'):  # it appends to the workdir: not while a run writes there
    return _evaluate_loaded(workdir, loaded, config)


def _evaluate_loaded(workdir: str, loaded: checkpoints.LoadedCheckpoint, config) -> dict[str, float]:
  if config is not None and config.model.to_dict() != loaded.config.model.to_dict():
    raise UserError(f"--mode eval takes the model from the checkpoint of {workdir}; config.model differs from it "
                    f"({json.dumps(loaded.config.model.to_dict(), sort_keys=True)}): drop the model overrides")
  config = config or loaded.config
  dataset = config.dataset
  source = sources.open_split(dataset.name, dataset.eval_split, dataset.get('data_dir'))
  classes = getattr(loaded.model.backbone, 'num_classes', None)
  if classes is not None and source.num_classes != classes:
    raise UserError(f"{dataset.name}:{dataset.eval_split} has {source.num_classes} classes but the model of "
                    f"{workdir} (step {loaded.step}) predicts {classes}; evaluate it on a dataset with the same "
                    f"classes as {loaded.config.dataset.name}")
  mesh = parallel.make_mesh()
  variables = jax.device_put(loaded.variables, parallel.replicated(mesh))
  eval_data = pipelines.make_eval_batches(config, mesh, source)
  result = Evaluator(loaded.model, mesh).evaluate(variables, eval_data)
  result = {'step': loaded.step, 'dataset': dataset.name, 'split': dataset.eval_split, 'ema': loaded.ema, **result}
  if jax.process_index() == 0:
    storage.append_text(storage.resolve(workdir) / EVAL_RESULTS_FILE, json.dumps(result) + '\n')
    print(f"step {loaded.step}: {dataset.name}:{dataset.eval_split} test_accuracy {result['test_accuracy']:.4f} "
          f"(error {100 * result['test_error']:.2f}%) test_loss {result['test_loss']:.4f} "
          f"on {result['num_examples']} examples" + (' (the moving average of the weights)' if loaded.ema else ''))
  return result
