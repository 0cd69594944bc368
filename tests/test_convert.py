"""torchvision / timm weight import (resnet_jax.convert): logits equal to torchvision's, without torch.

The golden files (tests/golden/torchvision/, written by tests/golden/make_torchvision_golden.py with torch)
hold torchvision's logits for weights that tests/golden/weights.py generates from each tensor's name and shape
with NumPy, and the manifest of those names and shapes. The test rebuilds the same state dict without torch,
converts it and compares logits at 224x224 and at 193x193 (odd at every stride: torch's symmetric padding).
Where torch and torchvision are installed, the same comparison also runs live against torchvision.
timm's "Bag of Tricks" ResNets (deep stem, average-pool projection; He et al. 2019 §4.2) have golden files of
their own in tests/golden/timm/ (make_timm_golden.py, timm 1.0.31) and a live test where timm is installed.
"""

import functools
import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import run_python
from resnet_jax import checkpoints
from resnet_jax import convert
from resnet_jax import evaluate
from resnet_jax import models
from resnet_jax.errors import UserError

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'golden')
GOLDEN_MODELS = ('resnet18', 'resnet50', 'resnext50_32x4d', 'wide_resnet50_2')
# timm only: basic units + ResNet-D, bottlenecks + ResNet-D, ResNet-C (deep stem, strided projection).
TIMM_GOLDEN_MODELS = ('resnet18d', 'resnet26d', 'resnet50c')
SIZES = (224, 193)
# max |logit difference| / max |logit|, float32 (measured on CPU: <= 9e-7 golden, <= 2.3e-6 live).
TOLERANCE = 1e-5

_spec = importlib.util.spec_from_file_location('golden_weights', os.path.join(GOLDEN, 'weights.py'))
weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weights)


@functools.lru_cache(maxsize=None)
def golden(name):
  """(header and manifest, {'logits_224': ..., 'logits_193': ...}) of a golden model."""
  library = 'timm' if name in TIMM_GOLDEN_MODELS else 'torchvision'
  with open(os.path.join(GOLDEN, library, f'{name}.json')) as file:
    header = json.load(file)
  with np.load(os.path.join(GOLDEN, library, f'{name}.npz')) as logits:
    return header, dict(logits)


@functools.lru_cache(maxsize=None)
def state_dict(name):
  header, _ = golden(name)
  assert header['base_seed'] == weights.BASE_SEED and header['input_seed'] == weights.INPUT_SEED, (
      'tests/golden/weights.py changed since the golden files were written: rerun make_torchvision_golden.py')
  return weights.state_dict(header['tensors'])


@functools.lru_cache(maxsize=None)
def converted(name):
  return convert.from_torch_state_dict(state_dict(name), name)


@functools.lru_cache(maxsize=None)
def jitted_apply(name):
  """One jitted forward pass per model (it compiles once per input size)."""
  model = models.create_model(name)
  return jax.jit(lambda variables, x: model.apply(variables, x, train=False))


def logits(name, variables, size, batch):
  images = weights.images(batch, size).transpose(0, 2, 3, 1)  # NCHW -> NHWC
  return np.asarray(jitted_apply(name)(variables, images))


def relative_error(actual, expected):
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('name', GOLDEN_MODELS + TIMM_GOLDEN_MODELS)
def test_logits_equal_the_golden_logits(name, size):
  """torchvision's layout, and timm's: conv1.0/1.1/1.3/1.4/1.6 + bn1 (deep stem), downsample.1/.2 (ResNet-D), fc.
  At 193 every ResNet-D pool ends in a partial window (ceil mode), which must average its valid cells only."""
  header, expected = golden(name)
  assert header.get('timm', '1.0.31') == '1.0.31'
  expected = expected[f'logits_{size}']
  actual = logits(name, converted(name), size, header['batch'])
  assert actual.shape == expected.shape
  assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize('library', ['torchvision', 'timm'])
def test_logits_equal_the_live_library(library):
  """The golden weights loaded into the library's own model; its state dict (torch tensors) goes straight into
  the converter, and the logits agree."""
  torch = pytest.importorskip('torch')
  module = pytest.importorskip(library)
  if library == 'torchvision':
    names, build = GOLDEN_MODELS, lambda name: getattr(module.models, name)(weights=None)
  else:
    names, build = TIMM_GOLDEN_MODELS + ('resnet50d',), lambda name: module.create_model(name, pretrained=False)
  for name in names:
    network = build(name).eval()
    tensors = weights.state_dict([(k, v.shape) for k, v in network.state_dict().items()])
    network.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    variables = convert.from_torch_state_dict(network.state_dict(), name)
    for size in SIZES:
      with torch.no_grad():
        expected = network(torch.from_numpy(weights.images(1, size))).numpy()
      assert relative_error(logits(name, variables, size, 1), expected) <= TOLERANCE, (name, size)


def test_a_timm_name_the_zoo_lacks_names_the_nearest():
  with pytest.raises(UserError, match=r"'resnet26t' has no torchvision/timm counterpart .*the nearest are "
                                      r"resnet26d"):
    convert.from_torch_state_dict(state_dict('resnet26d'), 'resnet26t')
  # A ResNet-D file for the plain name: its deep stem and pool-shifted projections are named.
  with pytest.raises(UserError, match=r'another architecture.*unexpected conv1\.0\.weight'):
    convert.from_torch_state_dict(state_dict('resnet18d'), 'resnet18')


def test_pth_file_with_torch(tmp_path):
  torch = pytest.importorskip('torch')
  tensors = state_dict('resnet18')
  # torchvision's reference training script saves {'model': ..., 'optimizer': ..., 'epoch': ...}.
  path = str(tmp_path / 'checkpoint.pth')
  torch.save({'model': {k: torch.from_numpy(v) for k, v in tensors.items()}, 'epoch': 3}, path)
  loaded = convert.load_state_dict(path)
  assert sorted(loaded) == sorted(tensors)
  assert all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
  torch.save(torch.nn.Linear(2, 2), str(tmp_path / 'model.pt'))  # a pickled module, not a state dict
  with pytest.raises(UserError, match='torch.load'):
    convert.load_state_dict(str(tmp_path / 'model.pt'))


def assert_same(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert x.dtype == y.dtype and np.array_equal(x, y), path


def test_layout_and_dtypes():
  variables = converted('resnext50_32x4d')
  tensors = state_dict('resnext50_32x4d')
  assert set(variables) == {'params', 'batch_stats'}
  # Grouped conv: torch (O, I/G, kh, kw) -> Flax (kh, kw, I/G, O).
  kernel = variables['params']['stage2_unit1']['conv2']['kernel']
  assert kernel.shape == (3, 3, 8, 256) and kernel.dtype == np.float32
  np.testing.assert_array_equal(kernel[1, 2, 5, 7], tensors['layer2.0.conv2.weight'][7, 5, 1, 2])
  np.testing.assert_array_equal(variables['params']['stage2_unit1']['proj_conv']['kernel'][0, 0],
                                tensors['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(variables['batch_stats']['stage4_unit3']['bn3']['var'],
                                tensors['layer4.2.bn3.running_var'])
  np.testing.assert_array_equal(variables['params']['stem_bn']['scale'], tensors['bn1.weight'])
  np.testing.assert_array_equal(variables['params']['head']['kernel'], tensors['fc.weight'].T)
  # DataParallel's 'module.' prefix is the same state dict.
  assert_same(convert.from_torch_state_dict({f'module.{k}': v for k, v in tensors.items()}, 'resnext50_32x4d'),
              variables)


def test_safetensors_round_trip(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  path = str(tmp_path / 'resnet18.safetensors')
  safetensors_numpy.save_file(state_dict('resnet18'), path)
  assert_same(convert.from_torch_state_dict(convert.load_state_dict(path), 'resnet18'), converted('resnet18'))


def test_bad_files(tmp_path, monkeypatch):
  path = tmp_path / 'weights.ckpt'
  path.write_bytes(b'\0')
  with pytest.raises(UserError, match=r'unknown weight file format .*\.safetensors.*\.pth'):
    convert.load_state_dict(str(path))
  with pytest.raises(UserError, match='does not exist'):
    convert.load_state_dict(str(tmp_path / 'missing.safetensors'))
  (tmp_path / 'broken.safetensors').write_bytes(b'not a safetensors file')
  with pytest.raises(UserError, match='not a readable safetensors file'):
    convert.load_state_dict(str(tmp_path / 'broken.safetensors'))
  # Without torch, a .pth file is one error that says what to install (or to convert to safetensors).
  (tmp_path / 'weights.pth').write_bytes(b'\0')
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(UserError, match=r'pip install torch.*safetensors'):
    convert.load_state_dict(str(tmp_path / 'weights.pth'))


def test_another_architecture_is_one_error_listing_a_few_names():
  with pytest.raises(UserError) as error:
    convert.from_torch_state_dict(state_dict('resnet18'), 'resnet50')
  message = str(error.value)
  assert 'another architecture' in message and 'resnet50' in message
  listed = message.split(': ', 2)[-1].split('; ')
  assert len([item for item in listed if not item.startswith('(and')]) <= 10
  assert 'missing layer1.0.conv3.weight' in message and 'more)' in message
  # Same names, other shapes (ResNet-50 -> ResNeXt-50): the shapes are named.
  with pytest.raises(UserError, match=r'0 missing, 0 unexpected and \d+ differently shaped .*'
                                      r'layer1\.0\.conv1\.weight is \(64, 64, 1, 1\) not \(128, 64, 1, 1\)'):
    convert.from_torch_state_dict(state_dict('resnet50'), 'resnext50_32x4d')
  with pytest.raises(UserError, match='unexpected layer4.1.extra.weight'):
    convert.from_torch_state_dict({**state_dict('resnet18'), 'layer4.1.extra.weight': np.zeros(3)}, 'resnet18')
  with pytest.raises(UserError, match='no torchvision/timm counterpart'):
    convert.from_torch_state_dict(state_dict('resnet18'), 'cifar_resnet20')


def test_head():
  tensors = state_dict('resnet18')
  with pytest.raises(UserError, match='head with 1000 classes, resnet18 was asked for 10: pass drop_head'):
    convert.from_torch_state_dict(tensors, 'resnet18', num_classes=10)
  headless = {k: v for k, v in tensors.items() if not k.startswith('fc.')}
  with pytest.raises(UserError, match='no head .*drop_head'):
    convert.from_torch_state_dict(headless, 'resnet18')

  full = converted('resnet18')
  for source in (tensors, headless):
    fresh = convert.from_torch_state_dict(source, 'resnet18', num_classes=10, drop_head=True)
    head = fresh['params'].pop('head')
    assert head['kernel'].shape == (512, 10) and head['bias'].shape == (10,)
    # torch nn.Linear's default, as the model initialises its head: U(-1/sqrt(512), 1/sqrt(512)), not zeros.
    assert 0 < np.abs(head['kernel']).max() <= 512 ** -0.5 and np.abs(head['bias']).max() <= 512 ** -0.5
    assert_same(fresh, {'params': {k: v for k, v in full['params'].items() if k != 'head'},
                        'batch_stats': full['batch_stats']})
  # num_classes=0: pooled features, no head; the file's head is not used.
  features = convert.from_torch_state_dict(tensors, 'resnet18', num_classes=0)
  assert 'head' not in features['params'] and features['params']['stem_conv'].keys() == {'kernel'}


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  path = str(tmp_path_factory.mktemp('weights') / 'resnet18.safetensors')
  safetensors_numpy.save_file(state_dict('resnet18'), path)
  return path


def test_cli_writes_a_directory_checkpoints_load_opens(tmp_path, resnet18_file, capsys):
  out = str(tmp_path / 'resnet18')
  convert.main([resnet18_file, '--model', 'resnet18', '--out', out])
  assert 'wrote' in capsys.readouterr().out
  loaded = checkpoints.load(out)
  assert (loaded.step, loaded.config.model.name, loaded.config.dataset.name) == (0, 'resnet18', 'imagenet2012')
  # The Classifier takes uint8 pixels and normalises them as torchvision does.
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  normalised = (images - np.float32(convert.IMAGENET_MEAN)) / np.float32(convert.IMAGENET_STD)
  expected = np.asarray(models.create_model('resnet18').apply(converted('resnet18'), normalised))
  predicted = evaluate.predict(loaded.model, loaded.variables, images, batch_size=2)
  assert relative_error(predicted, expected) <= TOLERANCE
  # A fresh 10-class head for fine-tuning.
  out = str(tmp_path / 'resnet18_10')
  convert.main([resnet18_file, '--model', 'resnet18', '--out', out, '--num_classes', '10', '--drop_head'])
  loaded = checkpoints.load(out)
  assert loaded.model.backbone.num_classes == 10 and loaded.config.dataset.name == 'none'
  assert loaded.variables['params']['backbone']['head']['kernel'].shape == (512, 10)


@pytest.mark.parametrize('args,message', [
    (['--model', 'resnet50'], 'another architecture'),
    (['--model', 'resnet18', '--num_classes', '10'], 'pass drop_head'),
    (['--model', 'cifar_resnet20'], 'no torchvision/timm counterpart'),
    (['--model', 'resnet50t'], 'the nearest are resnet50'),
])
def test_cli_errors_write_nothing(tmp_path, resnet18_file, capsys, args, message):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as exit_info:
    convert.main([resnet18_file, '--out', str(out)] + args)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0]
  assert not out.exists()


def test_cli_entry_point(tmp_path):
  (tmp_path / 'weights.ckpt').write_bytes(b'\0')
  result = run_python(['-m', 'resnet_jax.convert', str(tmp_path / 'weights.ckpt'), '--model', 'resnet18',
                       '--out', str(tmp_path / 'out')])
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'unknown weight file format' in lines[0]
  assert not (tmp_path / 'out').exists()
