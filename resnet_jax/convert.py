r"""torchvision / timm ResNet weights -> Flax variables of the zoo's model of the same name, and a directory that
`checkpoints.load` opens.

    python -m resnet_jax.convert resnet50.safetensors --model resnet50 --out runs/resnet50_torchvision
    python -m resnet_jax.convert resnet50.pth --model resnet50 --out runs/r50_init --num_classes 10 --drop_head

    loaded = checkpoints.load('runs/resnet50_torchvision')
    logits = evaluate.predict(loaded.model, loaded.variables, images_uint8)

    variables = convert.from_torch_state_dict(convert.load_state_dict('resnet50.safetensors'), 'resnet50')
    logits = models.create_model('resnet50').apply(variables, images, train=False)  # images NHWC, normalised

torchvision's `ResNet` (torchvision/models/resnet.py) names its tensors

    conv1.weight                       bn1.{weight, bias, running_mean, running_var, num_batches_tracked}
    layer{s}.{j}.conv{i}.weight        layer{s}.{j}.bn{i}.*         s = 1..4, j = 0.., i = 1..2 or 1..3
    layer{s}.{j}.downsample.0.weight   layer{s}.{j}.downsample.1.*  (projection shortcut, option B)
    fc.weight                          fc.bias

and timm's `ResNet` (timm/models/resnet.py) uses the same names for its plain ResNets, ResNeXts and wide
ResNets. The zoo's ImageNet names are the same networks (7x7 stem, stride on the 3x3 "v1.5", torch's symmetric
padding k//2, grouped 3x3 for ResNeXt, BatchNorm epsilon 1e-5), so converting is renaming and transposing:

    conv1 -> stem_conv, bn1 -> stem_bn, layer{s}.{j}.conv{i} / bn{i} -> stage{s}_unit{j+1}/conv{i} / bn{i},
    layer{s}.{j}.downsample.0 / .1 -> proj_conv / proj_bn, fc -> head;
    timm's "Bag of Tricks" names (resnet*d, resnet50c, resnet50s; He et al. 2019 §4.2): the deep stem
    conv1.0 / 1.1 / 1.3 / 1.4 / 1.6 -> stem_conv1 / stem_bn1 / stem_conv2 / stem_bn2 / stem_conv3 (indices 2 and 5
    are ReLUs, without tensors), bn1 -> stem_bn; ResNet-D's projection downsample.1 / .2 -> proj_conv / proj_bn
    (downsample.0 is the average pool, without tensors);
    conv weight (O, I/groups, kh, kw) -> kernel (kh, kw, I/groups, O); fc weight (classes, C) -> kernel (C, classes);
    BN weight / bias -> params scale / bias, running_mean / running_var -> batch_stats mean / var.

`num_batches_tracked` is dropped: torch only uses it for momentum=None (cumulative averages), which neither
library trains with. The variables come out in the unrolled layout (`scan_units=False`;
`models.scan_variables` gives the scanned one).

Files: `.safetensors` are read with the safetensors package's NumPy API (no torch needed); `.pth` / `.pt` /
`.bin` (`torch.save` of a state dict, also wrapped as {'state_dict': ...} or {'model': ...} as timm's and
torchvision's training scripts save it) need torch.

The directory is a workdir at step 0: `config.json` (configs/default.py with the model's name) and an Orbax
checkpoint whose Classifier normalises raw pixels with torchvision's ImageNet statistics, so `evaluate.predict`
takes uint8 images. Every check (file format, architecture, head) runs before anything is written.
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import pickle
import re
from typing import Any, Mapping, Optional, Sequence

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import errors
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import state as state_lib
from resnet_jax import storage
from resnet_jax.data import normalization
from resnet_jax.errors import UserError
from resnet_jax.models import counting
from resnet_jax.models import layers as layers_lib

#: Registry names with a torchvision / timm counterpart of the same name and tensor layout.
TORCH_MODELS = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnext50_32x4d',
                'resnext101_32x4d', 'resnext101_32x8d', 'resnext101_64x4d', 'wide_resnet50_2',
                # timm only (timm/models/resnet.py): ResNet-C/D of "Bag of Tricks"
                'resnet18d', 'resnet26d', 'resnet34d', 'resnet50d', 'resnet101d', 'resnet152d', 'resnet50c',
                'resnet50s')
#: Weight files `load_state_dict` reads.
FORMATS = ('.safetensors', '.pth', '.pt', '.bin')
#: torchvision's ImageNet normalisation (transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224,
#: 0.225]) of images in [0, 1]; timm's default for these models too), times 255: the Classifier takes raw pixels.
#: The same statistics the data layer gives ImageNet runs.
IMAGENET_MEAN, IMAGENET_STD = normalization.IMAGENET_MEAN, normalization.IMAGENET_STD
#: The image shape the converted directory records (torchvision's and timm's ImageNet crop).
IMAGE_SHAPE = (224, 224, 3)
#: The base config of a converted directory (a config file of the checkout, as every run's).
DEFAULT_CONFIG = os.path.join(config_lib.configs_directory(), 'default.py')  # checkout or installed copy

# Flax module name -> torch module name where they differ (conv{i} / bn{i} of a unit keep their names).
_MODULES = {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'proj_conv': 'downsample.0', 'proj_bn': 'downsample.1',
            'head': 'fc', 'stem_conv1': 'conv1.0', 'stem_bn1': 'conv1.1', 'stem_conv2': 'conv1.3',
            'stem_bn2': 'conv1.4', 'stem_conv3': 'conv1.6'}
# timm's avg_down shortcut (`downsample_avg`): Sequential(pool, conv, norm), one index later than the plain one.
_AVERAGE_DOWNSAMPLE_MODULES = {'proj_conv': 'downsample.1', 'proj_bn': 'downsample.2'}
# Flax variable name -> torch tensor name (a conv's and a BN's 'weight' are told apart by the module).
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
_HEAD = ('fc.weight', 'fc.bias')
# How many problem names one error lists; a file for another architecture has hundreds.
_MAX_LISTED = 10


def mismatch_report(missing: Sequence[str], unexpected: Sequence[str], shaped: Sequence[str], noun: str) -> str:
  """'M missing, U unexpected and S differently shaped {noun}: ' and a few of them, every kind its share: why
  weights do not fit a model (here and `finetune.load_initialization`). `shaped`: 'NAME is ...' sentences."""
  kinds = [[f'missing {name}' for name in missing], [f'unexpected {name}' for name in unexpected], list(shaped)]
  listed = [kind[i] for i in range(_MAX_LISTED) for kind in kinds if i < len(kind)][:_MAX_LISTED]
  more = len(missing) + len(unexpected) + len(shaped) - len(listed)
  return (f'{len(missing)} missing, {len(unexpected)} unexpected and {len(shaped)} differently shaped {noun}: '
          + '; '.join(listed) + (f' (and {more} more)' if more > 0 else ''))


def torch_name(path: tuple[str, ...], downsample: str = 'conv') -> str:
  """('params', 'stage2_unit1', 'proj_conv', 'kernel') -> 'layer2.0.downsample.0.weight'; with
  downsample='avg' (a ResNet-D, `ResNet.downsample`) 'layer2.0.downsample.1.weight'."""
  _, *modules, leaf = path
  names = []
  for module in modules:
    unit = re.fullmatch(r'stage(\d+)_unit(\d+)', module)
    if unit:
      names.append(f'layer{unit[1]}.{int(unit[2]) - 1}')
    elif downsample == 'avg' and module in _AVERAGE_DOWNSAMPLE_MODULES:
      names.append(_AVERAGE_DOWNSAMPLE_MODULES[module])
    else:
      names.append(_MODULES.get(module, module))
  return '.'.join(names + [_LEAVES[leaf]])


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax variable's shape: HWIO -> OIHW, (in, out) -> (out, in), vectors unchanged."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _from_torch_layout(value: np.ndarray) -> np.ndarray:
  """A torch tensor in the Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out), vectors unchanged."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value.T


def _as_numpy(value: Any) -> np.ndarray:
  """A NumPy array of a NumPy array or a torch tensor (a live model's `state_dict()`, `torch.load`). NumPy has no
  bfloat16, so torch's floating tensors go through float32; safetensors' NumPy API gives ml_dtypes' bfloat16."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def check_model_name(model_name: str) -> None:
  """UserError for a name without weights to import, naming the closest importable names first (timm has many
  ResNets the zoo does not build: resnet50t, resnet26t, seresnet50, ...)."""
  if model_name not in TORCH_MODELS:
    close = difflib.get_close_matches(str(model_name), TORCH_MODELS, n=3, cutoff=0.6)
    hint = f'the nearest are {", ".join(close)}; ' if close else ''
    raise UserError(f'{model_name!r} has no torchvision/timm counterpart to import weights from; {hint}choose one '
                    f'of {", ".join(TORCH_MODELS)}')


#: Prefixes that training wrappers put before every tensor name when the wrapper itself is saved:
#: DataParallel / DistributedDataParallel ('module.'), torch.compile ('_orig_mod.'), a Lightning module or timm's
#: EMA wrapper holding the network as `.model` ('model.').
WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'model.')


def _without_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  """`state_dict` with the wrapper prefixes every name shares removed, however nested ('module._orig_mod.')."""
  while True:
    prefix = next((p for p in WRAPPER_PREFIXES if all(str(name).startswith(p) for name in state_dict)), None)
    if prefix is None:
      return state_dict
    state_dict = {name[len(prefix):]: value for name, value in state_dict.items()}


def _check_values(tensors: Mapping[str, np.ndarray], source: str) -> None:
  """Refuses tensors that do not convert to float32 weights faithfully: integer (quantised) or bool values,
  NaN or infinity, and BatchNorm variances below 0 (a variance cannot be: the file is damaged)."""
  def named(names):
    return ', '.join(names[:5]) + (f' (and {len(names) - 5} more)' if len(names) > 5 else '')
  integer = sorted(name for name, value in tensors.items() if value.dtype.kind in 'biu')
  if integer:
    kinds = sorted({str(tensors[name].dtype) for name in integer})
    raise UserError(f"{source} holds {'/'.join(kinds)} tensors ({named(integer)}): a quantised or integer "
                    "checkpoint does not convert faithfully to float weights; dequantise it (or export the float "
                    "model's state dict) and convert that")
  nonfinite = sorted(name for name, value in tensors.items()
                     if not np.isfinite(np.asarray(value, np.float32)).all())
  if nonfinite:
    raise UserError(f'{source} holds NaN or infinite values in {named(nonfinite)}: the checkpoint is damaged (or '
                    'was saved after training diverged); use another file')
  negative = sorted(name for name, value in tensors.items()
                    if name.endswith('running_var') and (np.asarray(value, np.float32) < 0).any())
  if negative:
    raise UserError(f'{source} holds negative BatchNorm variances in {named(negative)}: the checkpoint is '
                    'damaged; use another file')


def from_torch_state_dict(state_dict: Mapping[str, Any], model_name: str, num_classes: Optional[int] = None,
                          drop_head: bool = False, *, seed: int = 0,
                          source: str = 'the state dict') -> dict[str, Any]:
  """{'params', 'batch_stats'} of `models.create_model(model_name, num_classes=...)` from a torchvision / timm
  state dict (tensor names and layouts: the module docstring). Values: NumPy float32 arrays (no device placement).

  Args:
    state_dict: tensor name -> NumPy array or torch tensor, as `load_state_dict` or `model.state_dict()` give.
    model_name: one of `TORCH_MODELS`.
    num_classes: classes of the head; None: the file's (the registry's 1000 with drop_head or a headless file).
      0: no head (pooled features, `models.create_model(name, num_classes=0)`); the file's head is not used.
    drop_head: start a fresh head of `num_classes` instead of the file's, initialised as the model initialises
      it (torch nn.Linear's default, `layers.torch_linear_*_init`, from `seed`): fine-tuning on other classes.
    source: how error messages name the state dict (the file's path).

  Raises:
    UserError: a model without a torch counterpart; a state dict for another architecture (one message listing
      missing, unexpected and differently shaped tensors); a head with other than `num_classes` classes without
      drop_head.
  """
  check_model_name(model_name)
  if not isinstance(state_dict, Mapping) or not state_dict:
    raise UserError(f'{source} holds no tensors (expected a mapping of tensor names to arrays)')
  state_dict = _without_wrapper_prefixes(state_dict)
  tensors = {name: _as_numpy(value) for name, value in state_dict.items()
             if not name.endswith('.num_batches_tracked')}
  _check_values(tensors, source)
  if num_classes is None and not drop_head and 'fc.weight' in tensors:
    num_classes = tensors['fc.weight'].shape[0]
  model = models.create_model(model_name, num_classes=num_classes)
  # The expected tree, from shapes only (no compilation, no weights).
  flat = traverse_util.flatten_dict(counting.abstract_variables(model, (1, 224, 224, 3)))
  expected = {torch_name(path, model.downsample): path for path in flat}
  head_shape = flat[('params', 'head', 'kernel')].shape if ('params', 'head', 'kernel') in flat else None
  if drop_head or head_shape is None:
    tensors = {name: value for name, value in tensors.items() if name not in _HEAD}
    expected = {name: path for name, path in expected.items() if name not in _HEAD}

  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  mismatched = sorted(name for name in set(expected) & set(tensors)
                      if tensors[name].shape != torch_shape(flat[expected[name]].shape))
  if missing or unexpected or mismatched:
    # Only the head's class count differs: the backbone fits, the classes are another task's.
    if not (missing or unexpected) and set(mismatched) <= set(_HEAD) and (
        tensors['fc.weight'].shape[1:] == (head_shape[0],)):
      raise UserError(f'{source} has a head with {tensors["fc.weight"].shape[0]} classes, {model_name} was asked '
                      f'for {head_shape[1]}: pass drop_head=True (--drop_head) to start a fresh {head_shape[1]}-'
                      f'class head on the imported backbone, or num_classes={tensors["fc.weight"].shape[0]}')
    if set(missing) <= set(_HEAD) and not unexpected and not mismatched:
      raise UserError(f'{source} has no head ({", ".join(missing)} missing): pass drop_head=True (--drop_head) to '
                      f'start a fresh head, or num_classes=0 for pooled features')
    shaped = [f'{name} is {tensors[name].shape} not {torch_shape(flat[expected[name]].shape)}' for name in mismatched]
    units = [len({name.split('.')[1] for name in tensors if name.startswith(f'layer{s}.')}) for s in range(1, 5)]
    raise UserError(f'{source} does not hold a torchvision/timm {model_name} (a file for another architecture? it '
                    f'has {"/".join(map(str, units))} units in layer1..4): '
                    + mismatch_report(missing, unexpected, shaped, 'tensors'))

  converted = {}
  for name, path in expected.items():
    converted[path] = np.ascontiguousarray(_from_torch_layout(tensors[name]), flat[path].dtype)
  if drop_head and head_shape is not None:
    kernel_key, bias_key = jax.random.split(jax.random.key(seed))
    dtype = flat[('params', 'head', 'kernel')].dtype
    converted[('params', 'head', 'kernel')] = np.asarray(
        layers_lib.torch_linear_kernel_init(kernel_key, head_shape, dtype))
    converted[('params', 'head', 'bias')] = np.asarray(
        layers_lib.torch_linear_bias_init(head_shape[0])(bias_key, (head_shape[1],), dtype))
  return traverse_util.unflatten_dict(converted)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Tensor name -> NumPy array of a `.safetensors` file (no torch needed) or a `.pth` / `.pt` / `.bin` file
  saved with `torch.save` (needs torch; a state dict, also under 'state_dict' or 'model')."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in FORMATS:
    raise UserError(f'{path}: unknown weight file format {suffix or "(no suffix)"!r}; accepted: .safetensors '
                    '(read without torch), .pth / .pt / .bin (a torch.save state dict; needs torch)')
  if not storage.is_file(path):
    raise UserError(f'{path} does not exist or is not a file')
  if suffix == '.safetensors':
    try:
      import safetensors  # pylint: disable=g-import-not-at-top
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f'reading {path} needs the safetensors package: pip install safetensors') from None
    try:
      return dict(safetensors_numpy.load(storage.read_bytes(path)))
    except (safetensors.SafetensorError, OSError, ValueError) as error:
      raise UserError(f'{path} is not a readable safetensors file ({error})') from None

  # Imported only here: torch is an optional dependency (the `torch` extra) and a second of import time.
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'{path} is a PyTorch file: reading it needs torch (pip install torch; the CPU build is '
                    'enough), or convert it to .safetensors where torch is installed (safetensors.torch.save_file'
                    '(torch.load(PATH), "OUT.safetensors")) and pass that') from None
  try:
    # weights_only: never run code from a downloaded pickle.
    content = torch.load(io.BytesIO(storage.read_bytes(path)), map_location='cpu', weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
    raise UserError(f'{path} could not be read with torch.load(weights_only=True) ({str(error).splitlines()[0]}); '
                    'save the state dict (torch.save(model.state_dict(), PATH)), not the model') from None
  for key in ('state_dict', 'model'):
    if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
      content = content[key]
      break
  if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
    keys = list(content)[:10] if isinstance(content, Mapping) else type(content).__name__
    raise UserError(f'{path} holds no state dict of tensors (found {keys}); save torch.save(model.state_dict(), '
                    'PATH)')
  return {name: _as_numpy(value) for name, value in content.items()}


# ---------------------------------------------------------------------------------------------------------------
# The directory `checkpoints.load` opens
# ---------------------------------------------------------------------------------------------------------------


def converted_config(model_name: str, num_classes: int) -> ml_collections.ConfigDict:
  """configs/default.py with the model's name and torchvision's normalisation. The dataset is ImageNet for a
  1000-class head (what torchvision's and timm's weights were trained on), a placeholder for any other head: set
  config.dataset.name before fine-tuning or evaluating."""
  config = config_lib.load_config_file(DEFAULT_CONFIG)
  config.model.name = model_name
  config.dataset.name = 'imagenet2012' if num_classes == 1000 else 'none'
  config.input.mean = IMAGENET_MEAN
  config.input.std = IMAGENET_STD
  return config


def _check_out(out: str) -> None:
  if not isinstance(out, str) or not out.strip():
    raise UserError(f'--out {out!r} is empty; name the directory to write, e.g. --out runs/resnet50_converted')
  checkpoints.check_location(out)
  root = storage.resolve(out)
  if storage.exists(root / checkpoints.CHECKPOINT_DIR) or storage.exists(root / 'config.json'):
    raise UserError(f'--out {out} already holds a run or a converted model; choose a new directory')
  if storage.is_file(root):
    raise UserError(f'--out {out} is a file, not a directory; choose another path')
  if not storage.is_remote(root):
    existing = storage.existing_ancestor(os.fspath(root))
    if not os.path.isdir(existing):
      raise UserError(f'--out {out}: {existing} is a file, not a directory; choose another path')
    if not os.access(existing, os.W_OK | os.X_OK):
      raise UserError(f'--out {out}: {existing} is not writable; choose a directory you can write to')


def _partial(out: str):
  """Where a convert writes before renaming to `out`: a kill leaves this sibling, which the next convert replaces,
  never a half-written `out` that blocks the rerun."""
  root = storage.resolve(out)
  return root.parent / f'{root.name}.partial'


def write_directory(out: str, variables: Mapping[str, Any], model_name: str, source: str = '') -> None:
  """Writes `variables` of `model_name` as a workdir at step 0: config.json and an Orbax checkpoint of the
  TrainState (optimizer state freshly initialised), which `checkpoints.load(out)` opens."""
  _check_out(out)
  head = variables['params'].get('head')
  num_classes = int(head['kernel'].shape[1]) if head is not None else 0
  config = converted_config(model_name, num_classes)
  model = classifier.model_from_config(config, num_classes, IMAGENET_MEAN, IMAGENET_STD)
  # The TrainState `checkpoints.load` restores: the Classifier's variables nest the backbone's under 'backbone',
  # and its optimizer state is that of config.optimizer (any schedule: its structure does not depend on it).
  tx = optim.make_optimizer(config, lambda count: 0.0)
  state = state_lib.from_variables(
      {collection: {'backbone': jax.tree.map(jnp.asarray, variables[collection])}
       for collection in ('params', 'batch_stats')}, tx)
  meta = {'model': classifier.describe(model, num_classes, IMAGE_SHAPE),
          'config': config.to_dict(), 'converted_from': str(storage.resolve(source)) if source else ''}
  partial = _partial(out)
  if storage.exists(partial):  # left by a convert that was killed
    partial.rmtree()
  try:
    storage.make_dirs(partial)
    storage.write_text(partial / 'config.json', config_lib.to_json(config))
    with checkpoints.Checkpointer(str(partial), best_metric=None) as checkpointer:
      checkpointer.save(0, state, meta)
      checkpointer.wait()
    root = storage.resolve(out)
    if storage.exists(root) and storage.list_names(root):  # a directory of other files: move ours in
      for name in (checkpoints.CHECKPOINT_DIR, 'config.json'):  # config.json last: it marks a complete directory
        storage.move(partial / name, root / name)
      partial.rmtree()
    else:
      if storage.exists(root):
        root.rmdir()
      storage.move(partial, root)
  except OSError as error:
    raise UserError(f'--out {out} cannot be written ({error.strerror or error}); choose a writable directory with '
                    'room for the weights') from None


def convert_file(src: str, model_name: str, out: str, num_classes: Optional[int] = None,
                 drop_head: bool = False) -> dict[str, Any]:
  """`python -m resnet_jax.convert`: reads `src`, converts it for `model_name`, writes the directory `out`.
  Every check runs before anything is written. Returns the variables."""
  check_model_name(model_name)
  _check_out(out)
  variables = from_torch_state_dict(load_state_dict(src), model_name, num_classes, drop_head, source=src)
  write_directory(out, variables, model_name, source=src)
  return variables


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m resnet_jax.convert',
      description='Converts torchvision / timm ResNet weights into a directory resnet_jax.checkpoints.load opens.')
  parser.add_argument('src', help=f'weights file: {", ".join(FORMATS)} (.safetensors needs no torch)')
  parser.add_argument('--model', required=True, help=f'registry name: {", ".join(TORCH_MODELS)}')
  parser.add_argument('--out', required=True, help='directory to write (must not hold a run)')
  parser.add_argument('--num_classes', type=int, default=None,
                      help="classes of the head (default: the file's); 0: no head (pooled features)")
  parser.add_argument('--drop_head', action='store_true',
                      help="start a fresh head of --num_classes classes instead of the file's (fine-tuning)")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines are not for the terminal
  with errors.exit_on_error():
    variables = convert_file(args.src, args.model, args.out, args.num_classes, args.drop_head)
  head = variables['params'].get('head')
  classes = f'{head["kernel"].shape[1]} classes' + (' (fresh head)' if args.drop_head else '') if head else 'no head'
  print(f'wrote {args.out}: {args.model}, {classes}, from {args.src}; '
        f'open it with resnet_jax.checkpoints.load({args.out!r})')


if __name__ == '__main__':
  main()
