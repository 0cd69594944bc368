"""Training parity with PyTorch, the torch-free half: the cases, resnet_jax's side of a run, the batch plan, the
golden summaries. Shared by `make_training_golden.py` (with torch: runs the reference of
benchmarks/peers/torch_reference.py on the same weights and batches and writes `training/CASE.json`) and
tests/test_training_parity.py (without torch: resnet_jax against those files; with torch: both, live).

resnet_jax's side is the product's own code path: `train.build_experiment` on an npz dataset (device-resident
pipeline), the initial weights put in with resnet_jax.convert's naming (`convert.torch_name`), then
`train.make_runner` one step per dispatch: the step `python -m resnet_jax.main` runs. The batch plan is
what that pipeline draws for each step: the dataset indices (`DeviceResidentData.batch_indices`) and the crop
offsets and flips (`SmallImageAugment.draw` with the step's augmentation key, `train.step_keys`); the reference
trains on exactly these batches.

Initial weights in the golden cases: `weights.tensor_value` of every torch tensor name (deterministic NumPy, so the
test rebuilds them without torch); the live test starts from torch's own initialisation converted.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax import config as config_lib
from resnet_jax import convert
from resnet_jax import parallel
from resnet_jax import state as state_lib
from resnet_jax import train
from resnet_jax.models import counting

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GOLDEN_DIR = os.path.join(HERE, 'training')
DIGITS = os.path.join(REPO, 'resnet_jax', 'data', 'digits.npz')


@dataclasses.dataclass(frozen=True)
class Case:
  """A small training run both implementations do: model, data, recipe."""
  model: str                       # resnet_jax registry name (= the reference's)
  stage_sizes: tuple               # units per stage (small nets)
  data: str                        # 'digits' (8x8x1), 'digits32' / 'digits64' (upsampled to 32x32x3 / 64x64x3)
  examples: int                    # training examples taken from the embedded digits
  batch_size: int
  steps: int
  boundaries: tuple                # lr / 10 at these steps
  crop_padding: int
  flip: bool
  bn_running_var: str = 'unbiased'
  base_lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 1e-4
  seed: int = 0


CASES = {
    # ResNet-8 (He et al. 2015's CIFAR net with n=1; option A), the original unit.
    'cifar_resnet8': Case('cifar_resnet20', (1, 1, 1), 'digits', 256, 32, 12, (8,), 1, True),
    # The same with the running variance as flax keeps it (biased): training is identical, the running variance
    # differs from torch's by exactly the factor (n - 1) / n on every update.
    'cifar_resnet8_biased_var': Case('cifar_resnet20', (1, 1, 1), 'digits', 256, 32, 12, (8,), 1, True,
                                     bn_running_var='biased'),
    # Full pre-activation ResNet-8 (He et al. 2016 (e)).
    'cifar_preact_resnet8': Case('cifar_preact_resnet20', (1, 1, 1), 'digits', 256, 32, 12, (8,), 1, True),
    # A bottleneck ImageNet-style net (torchvision's ResNet-50 layout: 7x7 stem, max-pool, v1.5, option B), one
    # unit per stage, at 32x32 (last stage 1x1: its BN statistics are over the 8 values of the batch); two steps
    # at lr 0.01 then 0.001. From the third step on this regime is chaotic (the loss jumps from 2.8 to 4.3 and
    # float32 rounding differences grow ~30x per step, between any two float32 implementations), see README.
    'resnet50_1111_32px': Case('resnet50', (1, 1, 1, 1), 'digits32', 64, 8, 2, (1,), 4, True, base_lr=0.01),
}
#: Cases the golden maker can also run (torch installed): full-size ResNet-50 at 32x32, where float32 itself is
#: the limit (README: torch's own float32 gradient is 1.8% from its float64 one there, resnet_jax's 1.1%).
LIVE_CASES = {
    **CASES,
    'resnet50_32px': Case('resnet50', (3, 4, 6, 3), 'digits32', 64, 8, 2, (1,), 4, True, base_lr=0.01),
}


def dataset(case: Case) -> tuple[np.ndarray, np.ndarray]:
  """The case's training images (uint8 NHWC) and labels: the first `examples` embedded digits."""
  with np.load(DIGITS) as digits:
    images, labels = digits['images'][:case.examples], digits['labels'][:case.examples].astype(np.int64)
  if case.data in ('digits32', 'digits64'):
    # nearest upsampling, three differently scaled channels, plus noise: without it, equal neighbouring pixels
    # give exactly equal activations, and max-pooling's gradient at such ties is a convention (torch routes it to
    # the first maximum of the window, XLA's select-and-scatter may pick another): equally valid, not equal.
    factor = int(case.data[len('digits'):]) // 8
    big = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2).astype(np.float32)
    noise = np.random.default_rng(2015).integers(0, 24, big.shape[:3] + (3,))
    images = (np.concatenate([big, 0.8 * big + 20, 230 - 0.9 * big], axis=-1) + noise).clip(0, 255).astype(np.uint8)
  return images, labels


def write_dataset(case: Case, directory: str) -> str:
  """Writes the case's data as an npz dataset (train = test split: only training matters); returns its name."""
  images, labels = dataset(case)
  os.makedirs(directory, exist_ok=True)
  for split in ('train', 'test'):
    np.savez(os.path.join(directory, f'{split}.npz'), images=images, labels=labels)
  return f'npz:{directory}'


def make_config(case: Case, dataset_name: str):
  """configs/default.py with the case's recipe: float32, global BN, no warm-up, step decay at `boundaries`."""
  config = config_lib.load_config_file(os.path.join(REPO, 'configs', 'default.py'))
  config.seed = case.seed
  config.model.name = case.model
  config.model.stage_sizes = tuple(case.stage_sizes)
  config.model.dtype = 'float32'
  config.model.bn_running_var = case.bn_running_var
  config.dataset.name = dataset_name
  config.dataset.pipeline = 'device'
  config.augment.crop_padding = case.crop_padding
  config.augment.flip = case.flip
  config.batch_size = case.batch_size
  config.eval_batch_size = case.batch_size
  config.total_steps = case.steps
  config.schedule.boundaries_steps = tuple(case.boundaries)
  config.schedule.warmup = 'none'
  config.schedule.base_lr = case.base_lr
  config.optimizer.momentum = case.momentum
  config.optimizer.weight_decay = case.weight_decay
  return config


# ----------------------------------------------------------------------------------------------------------
# Weights in torch's names and layouts <-> resnet_jax variables (resnet_jax.convert's mapping).


def _abstract(model, image_shape) -> dict[tuple, Any]:
  return traverse_util.flatten_dict(counting.abstract_variables(model, (1,) + tuple(image_shape)))


def torch_shape(shape) -> tuple:
  """convert's layout rule: HWIO -> OIHW, (in, out) -> (out, in), vectors unchanged."""
  shape = tuple(shape)
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(reversed(shape))


def manifest(backbone, image_shape) -> list[tuple[str, tuple]]:
  """[(torch name, torch shape)] of every variable of a resnet_jax backbone."""
  return sorted((convert.torch_name(path), torch_shape(leaf.shape)) for path, leaf in
                _abstract(backbone, image_shape).items())


def to_variables(state_dict: dict[str, np.ndarray], backbone, image_shape) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `backbone` from a state dict in torch's names and layouts."""
  out = {}
  for path, leaf in _abstract(backbone, image_shape).items():
    value = np.asarray(state_dict[convert.torch_name(path)], np.float32)
    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    assert value.shape == leaf.shape, (path, value.shape, leaf.shape)
    out[path] = value
  return traverse_util.unflatten_dict(out)


def to_torch_arrays(variables) -> dict[str, np.ndarray]:
  """torch name -> NumPy value (torch layout) of resnet_jax variables (backbone layout)."""
  out = {}
  for path, value in traverse_util.flatten_dict(variables).items():
    value = np.asarray(value, np.float32)
    out[convert.torch_name(path)] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return out


def golden_initial_state_dict(case: Case, backbone, image_shape) -> dict[str, np.ndarray]:
  """The golden cases' initial weights: weights.tensor_value of each torch name (no torch needed)."""
  from weights import tensor_value  # tests/golden/weights.py  pylint: disable=import-outside-toplevel
  return {name: tensor_value(name, shape) for name, shape in manifest(backbone, image_shape)}


# ----------------------------------------------------------------------------------------------------------
# resnet_jax's run.


class JaxRun:
  """resnet_jax set up for a case: the experiment (model, optimizer, device-resident data), ready to train."""

  def __init__(self, case: Case, workdir: str, mesh=None):
    self.case = case
    self.config = make_config(case, write_dataset(case, os.path.join(workdir, 'data')))
    self.mesh = mesh or parallel.make_mesh()
    self.experiment = train.build_experiment(self.config, self.mesh)
    self.images, self.labels = dataset(case)
    self.backbone = self.experiment.model.backbone
    self.image_shape = self.experiment.image_shape

  @property
  def mean(self):
    return np.asarray(self.experiment.model.mean, np.float64)

  @property
  def std(self):
    return np.asarray(self.experiment.model.std, np.float64)

  def batch_plan(self, steps: Optional[int] = None) -> dict[str, np.ndarray]:
    """What the device-resident pipeline draws for steps 0..steps-1: 'indices' [S, B] (dataset rows), 'offsets'
    [S, B, 2] (crop corner, row and column, in the image padded by crop_padding) and 'flip' [S, B]."""
    data, augment = self.experiment.train_data, self.experiment.augment
    plan = {'indices': [], 'offsets': [], 'flip': []}
    for step in range(self.case.steps if steps is None else steps):
      step = jnp.int32(step)
      plan['indices'].append(np.asarray(data.batch_indices(step)))
      draw = augment.draw(train.step_keys(int(self.config.seed), step)[0], data.global_batch)
      plan['offsets'].append(np.asarray(draw['offsets']))
      plan['flip'].append(np.asarray(draw['flip']))
    return {key: np.stack(value) for key, value in plan.items()}

  def train(self, state_dict: dict[str, np.ndarray], record: bool = True) -> dict[str, Any]:
    """Trains `case.steps` steps from `state_dict` (torch names) with the product's resident runner, one step per
    dispatch. Returns {'loss': [S], 'lr': [S], 'states': [S x torch-name arrays] (if record), 'final'}."""
    replicated = parallel.replicated(self.mesh)
    backbone_variables = to_variables(state_dict, self.backbone, self.image_shape)
    variables = {collection: {'backbone': tree} for collection, tree in backbone_variables.items()}
    state = jax.device_put(state_lib.from_variables(jax.tree.map(jnp.asarray, variables), self.experiment.tx),
                           replicated)
    experiment = self.experiment
    runner = train.make_runner(experiment.model, experiment.tx, experiment.augment, experiment.config,
                               experiment.mesh, experiment.train_data.batch_in_program)
    arrays = self.experiment.train_data.arrays
    losses, lrs, states = [], [], []
    for step in range(self.case.steps):
      lrs.append(float(self.experiment.schedule(step)))
      totals = jax.device_put(train.zero_accumulator(), replicated)
      state, totals = runner(state, totals, arrays, 1)
      losses.append(float(totals['loss'] / totals['examples']))
      if record or step == self.case.steps - 1:
        states.append(self.state_arrays(state))
    return {'loss': losses, 'lr': lrs, 'states': states if record else [], 'final': states[-1]}

  @staticmethod
  def state_arrays(state) -> dict[str, np.ndarray]:
    variables = jax.device_get({'params': state.params['backbone'], 'batch_stats': state.batch_stats['backbone']})
    return to_torch_arrays(variables)


# ----------------------------------------------------------------------------------------------------------
# Summaries and comparisons.


def is_bn_stat(name: str) -> bool:
  return name.endswith('running_mean') or name.endswith('running_var')


def vector(arrays: dict[str, np.ndarray], stats: bool) -> np.ndarray:
  """The parameter vector (stats=False) or the BN running statistics (stats=True), float64, in name order."""
  return np.concatenate([np.ravel(arrays[name]).astype(np.float64) for name in sorted(arrays)
                         if is_bn_stat(name) == stats])


def relative_distance(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def probe(name: str, value: np.ndarray) -> float:
  """<value, r> for a fixed random unit vector r of the tensor's size (seeded by its name): a scalar that moves
  with any change of the tensor (a norm can stay while the values change)."""
  r = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(np.size(value))
  return float(np.dot(np.ravel(value).astype(np.float64), r / np.linalg.norm(r)))


def summary(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
  """Per tensor: its L2 norm and its probe (float64)."""
  return {name: {'norm': float(np.linalg.norm(np.ravel(value).astype(np.float64))), 'probe': probe(name, value)}
          for name, value in sorted(arrays.items())}


def compare_summaries(got: dict, want: dict) -> dict[str, float]:
  """Largest relative differences of the per-tensor norms and probes, parameters and BN statistics apart (a probe's
  difference is relative to the tensor's norm)."""
  worst = {'param_norm': 0.0, 'param_probe': 0.0, 'stat_norm': 0.0, 'stat_probe': 0.0}
  assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
  for name in want:
    kind = 'stat' if is_bn_stat(name) else 'param'
    scale = max(want[name]['norm'], 1e-12)
    worst[f'{kind}_norm'] = max(worst[f'{kind}_norm'], abs(got[name]['norm'] - want[name]['norm']) / scale)
    worst[f'{kind}_probe'] = max(worst[f'{kind}_probe'], abs(got[name]['probe'] - want[name]['probe']) / scale)
  return worst


def biased_from_unbiased(unbiased_var: np.ndarray, initial_var: np.ndarray, count: int, steps: int,
                         momentum: float = 0.9) -> np.ndarray:
  """The running variance flax's convention (biased) keeps, from torch's (unbiased), after `steps` updates of a
  statistic over `count` values from `initial_var`: both are m^k v0 + sum_i (1 - m) m^(k-i) var_i, torch's with
  var_i times count / (count - 1), so v_b = m^k v0 + (count - 1) / count * (v_u - m^k v0)."""
  start = momentum ** steps * np.asarray(initial_var, np.float64)
  return start + (count - 1) / count * (np.asarray(unbiased_var, np.float64) - start)


def bn_counts(backbone, image_shape, batch: int) -> dict[str, int]:
  """torch name of each running_var -> the number of values per statistic (batch x positions) in training."""
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if type(module).__name__ == 'BatchNorm' and context.method_name == '__call__':
      x = args[0]
      captured[('batch_stats',) + tuple(module.path) + ('var',)] = batch * math.prod(x.shape[1:-1])
    return out

  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  variables = counting.abstract_variables(backbone, (1,) + tuple(image_shape))
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: backbone.apply(v, x, train=True, mutable=['batch_stats']), variables,
                   jax.ShapeDtypeStruct((batch,) + tuple(image_shape), jnp.float32))
  return {convert.torch_name(path): count for path, count in captured.items()}
