"""resnet_jax.export: BatchNorm folding for every family, StableHLO in a process without resnet_jax, ONNX in
onnxruntime, the CLI and its bad inputs. Tiny models (a few units, 16-32 pixels): the whole module runs in
seconds."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import snapshot
from resnet_jax import checkpoints
from resnet_jax import classifier
from resnet_jax import convert
from resnet_jax import export
from resnet_jax import models
from resnet_jax import optim
from resnet_jax import state as state_lib
from resnet_jax.classifier import Classifier
from resnet_jax.errors import UserError

try:
  import onnxruntime  # pylint: disable=unused-import
  HAVE_ONNX = True
except ImportError:
  HAVE_ONNX = False
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime not installed (pip install '.[export]')")

SMALL_IMAGENET = dict(stage_sizes=(1, 1, 1, 1), stage_widths=(8, 8, 16, 16))
SMALL_CIFAR = dict(stage_sizes=(1, 1, 1))

# name -> (registry name, options, image size, (BNs folded, BNs kept as scale-and-shift))
FAMILIES = {
    'v1_basic_resnet18': ('resnet18', SMALL_IMAGENET, 32, (12, 0)),
    'v1_bottleneck_resnet50': ('resnet50', SMALL_IMAGENET, 32, (17, 0)),
    'cifar_resnet_option_a': ('cifar_resnet20', SMALL_CIFAR, 16, (7, 0)),
    'preact_cifar': ('cifar_preact_resnet20', SMALL_CIFAR, 16, (4, 3)),
    'preact_bottleneck_cifar164': ('cifar_preact_resnet164', SMALL_CIFAR, 16, (7, 3)),
    'preact_imagenet': ('preact_resnet152', SMALL_IMAGENET, 32, (9, 4)),
    'resnext': ('resnext50_32x4d', dict(stage_sizes=(1, 1, 1, 1), stage_widths=(16, 16, 16, 16)), 32, (17, 0)),
    'wide': ('wide_resnet50_2', SMALL_IMAGENET, 32, (17, 0)),
    'resnext29': ('resnext29_8x64d', dict(stage_sizes=(1, 1, 1), stage_widths=(8, 8, 8)), 16, (13, 0)),
    'densenet_bc': ('densenet_bc_100_12', dict(depth=16, growth_rate=4), 16, (6, 9)),
    'plain': ('cifar_plain20', SMALL_CIFAR, 16, (7, 0)),
    'plain_imagenet': ('plain18', SMALL_IMAGENET, 32, (9, 0)),
}
# Ablations of the residual unit and network (He et al. 2016 orders and shortcuts, stochastic depth, lesions).
VARIANTS = {
    'order_b_bn_after_add': dict(unit_order='bn_after_add'),
    'order_c_relu_before_add': dict(unit_order='relu_before_add'),
    'order_d_relu_preact': dict(unit_order='relu_preact'),
    'exclusive_gate': dict(shortcut='exclusive_gate'),
    'shortcut_gate': dict(shortcut='shortcut_gate'),
    'scaling': dict(shortcut='scaling', scale_residual=True),
    'conv1x1': dict(shortcut='conv1x1'),
    'dropout_shortcut': dict(shortcut='dropout'),
    'shortcut_c': dict(shortcut_type='C'),
    'stochastic_depth': dict(survival_prob_last=0.5),
    'lesioned': dict(lesioned_units=(1,)),
    'single_layer_units': dict(block='single'),
    'scan_units': dict(stage_sizes=(3, 1, 2), scan_units=True),
}


def randomize(variables, seed=0):
  """Non-trivial BatchNorm statistics and affine parameters (a fresh model's BNs are near identities)."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name, x = str(getattr(path[-1], 'key', '')), np.asarray(x)
    if name == 'mean':
      return rng.normal(0, 0.5, x.shape).astype(np.float32)
    if name == 'var':
      return rng.uniform(0.3, 3.0, x.shape).astype(np.float32)
    if name == 'scale':
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name == 'bias' and x.ndim == 1:
      return rng.normal(0, 0.3, x.shape).astype(np.float32)
    return x

  return jax.tree_util.tree_map_with_path(draw, variables)


def build(name, options, size, num_classes=5):
  model = Classifier(models.create_model(name, num_classes=num_classes, **options), mean=(110., 120., 130.),
                     std=(60., 65., 70.))
  variables = randomize(model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32)))
  return model, variables


def images(size, n=3, seed=0):
  return export.test_images((size, size, 3), n, seed)


def reference(model, variables, x):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))


def check_folded(model, variables, size):
  x = images(size)
  graph = export.fold_batch_norm(model, variables)
  expected = reference(model, variables, x)
  assert export._relative_error(jax.jit(graph.apply)(graph.params, x), expected) <= 1e-5
  # Nothing left that could have been folded: no scale-and-shift right after a conv read only by it.
  readers = np.bincount([i for node in graph.nodes for i in node.inputs], minlength=len(graph.nodes))
  for node in graph.nodes:
    if node.op == 'affine':
      source = node.inputs[0]
      assert graph.nodes[source].op != 'conv' or readers[source] > 1, node.name
  return graph


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_folded_equals_unfolded_every_family(family):
  name, options, size, (folded, kept) = FAMILIES[family]
  graph = check_folded(*build(name, options, size), size)
  assert (len(graph.folded), len(graph.kept)) == (folded, kept), (graph.folded, graph.kept)
  assert graph.count('affine') == kept


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_folded_equals_unfolded_every_unit_variant(variant):
  options = dict(SMALL_CIFAR)
  options.update(VARIANTS[variant])
  check_folded(*build('cifar_resnet20', options, 16), 16)


def test_kept_batch_norms_say_why():
  graph = export.fold_batch_norm(*build('cifar_preact_resnet20', SMALL_CIFAR, 16))
  kept = dict(graph.kept)
  assert set(kept) == {'stage2_unit1/bn1', 'stage3_unit1/bn1', 'final_bn'}
  assert 'sum of shortcut and branch' in kept['final_bn']
  # The first unit's shared pre-activation BN reads only the stem conv: folded into it.
  assert ('stage1_unit1/bn1', 'stem_conv') in graph.folded


def test_features_and_bare_backbone():
  model, variables = build('resnet18', SMALL_IMAGENET, 32)
  x = images(32)
  graph = export.fold_batch_norm(model, variables, features=True)
  headless = model.clone(backbone=model.backbone.clone(num_classes=0))
  stripped = dict(variables, params={'backbone': {k: v for k, v in variables['params']['backbone'].items()
                                                  if k != 'head'}})
  out = np.asarray(graph(x))
  assert out.shape == (3, 16) and graph.output_name == 'features'
  assert export._relative_error(out, reference(headless, stripped, x)) <= 1e-5
  # A bare backbone takes normalised floats.
  backbone = {c: variables[c]['backbone'] for c in variables}
  normalised = (x.astype(np.float32) - 120.0) / 65.0
  graph = export.fold_batch_norm(model.backbone, backbone)
  assert graph.input_dtype == 'float32'
  assert export._relative_error(graph(normalised), reference(model.backbone, backbone, normalised)) <= 1e-5


def test_refuses_a_layer_it_does_not_know():
  model, variables = build('cifar_resnet20', SMALL_CIFAR, 16)
  variables = dict(variables, params={'backbone': dict(variables['params']['backbone'],
                                                       extra_layer={'kernel': np.zeros((3, 3, 16, 16))})})
  with pytest.raises(UserError, match='extra_layer'):
    export.fold_batch_norm(model, variables)


ONNX_FAMILIES = ['v1_basic_resnet18', 'v1_bottleneck_resnet50', 'resnext', 'preact_cifar', 'densenet_bc']


@needs_onnx
@pytest.mark.parametrize('family', ONNX_FAMILIES)
def test_onnx_equals_checkpoint_in_onnxruntime(family):
  name, options, size, _ = FAMILIES[family]
  model, variables = build(name, options, size)
  graph = export.fold_batch_norm(model, variables)
  for batch in (1, None):  # batch 1, and a dynamic batch run at 1 and 4
    session = export.onnx_session(export.to_onnx(graph, (size, size, 3), batch))
    for n in ((1,) if batch else (1, 4)):
      x = images(size, n, seed=n)
      logits = session.run(None, {'images': x})[0]
      assert logits.shape == (n, 5)
      assert export._relative_error(logits, reference(model, variables, x)) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# A run on disk, the CLI, StableHLO in a fresh process
# ---------------------------------------------------------------------------------------------------------------


def write_run(workdir, name='cifar_preact_resnet20', options=SMALL_CIFAR, size=16, num_classes=10):
  """A checkpoint at step 7 as training writes it (config, meta, TrainState), of a tiny randomised model."""
  config = convert.converted_config(name, num_classes)
  config.dataset.name = 'digits'
  for key, value in options.items():
    config.model[key] = value
  mean, std = (110.0, 120.0, 130.0), (60.0, 65.0, 70.0)
  model = classifier.model_from_config(config, num_classes, mean, std)
  variables = randomize(model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32)))
  tx = optim.make_optimizer(config, lambda count: 0.0)
  state = state_lib.from_variables(variables, tx)
  meta = {'model': classifier.describe(model, num_classes, (size, size, 3)), 'config': config.to_dict()}
  with checkpoints.Checkpointer(str(workdir), best_metric=None) as checkpointer:
    checkpointer.save(7, state, meta)
    checkpointer.wait()
  return model, variables


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('export_run') / 'run'
  model, variables = write_run(workdir)
  return workdir, model, variables


def cli(argv, capsys):
  """`python -m resnet_jax.export ARGV` in-process: (exit status, stdout, stderr)."""
  status = 0
  try:
    export.main(argv)
  except SystemExit as exit_:
    status = exit_.code
  captured = capsys.readouterr()
  return status, captured.out, captured.err


FRESH_PROCESS = r'''
import json, sys
import numpy as np
from jax import export
directory = sys.argv[1]
manifest = json.load(open(f'{directory}/export.json'))
exported = export.deserialize(bytearray(open(f'{directory}/' + manifest['files']['stablehlo'], 'rb').read()))
for n in (1, 3):
  np.save(f'{directory}/../logits_{n}.npy', np.asarray(exported.call(np.load(f'{directory}/../images_{n}.npy'))))
assert not any(name.startswith('resnet_jax') for name in sys.modules), 'resnet_jax was imported'
print('in_avals', exported.in_avals)
'''


def test_cli_exports_stablehlo_read_without_resnet_jax(run, tmp_path, capsys):
  workdir, model, variables = run
  out = tmp_path / 'export'
  status, stdout, stderr = cli(['--workdir', str(workdir), '--out', str(out), '--format', 'stablehlo'], capsys)
  assert status == 0, stderr
  assert 'wrote' in stdout and 'step 7' in stdout
  manifest = json.loads((out / 'export.json').read_text())
  assert manifest['input'] == {'name': 'images', 'shape': [None, 16, 16, 3], 'dtype': 'uint8', 'layout': 'NHWC',
                               'values': 'raw pixels 0-255, normalised inside'}
  assert manifest['classes'] == 10 and manifest['source']['step'] == 7
  assert manifest['source']['model'] == 'cifar_preact_resnet20'
  assert manifest['normalisation']['mean'] == [110.0, 120.0, 130.0]
  assert sorted(os.listdir(out)) == ['export.json', 'model.stablehlo']
  for n in (1, 3):
    np.save(tmp_path / f'images_{n}.npy', images(16, n, seed=10 + n))
  result = subprocess.run([sys.executable, '-c', FRESH_PROCESS, str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  for n in (1, 3):
    expected = reference(model, variables, images(16, n, seed=10 + n))
    assert export._relative_error(np.load(tmp_path / f'logits_{n}.npy'), expected) <= 1e-5


@needs_onnx
def test_api_exports_both_formats_at_a_fixed_batch(run, tmp_path):
  workdir, model, variables = run
  manifest = export.export(str(workdir), 'stablehlo,onnx', str(tmp_path / 'out'), batch=2)
  assert manifest['files'] == {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
  assert manifest['input']['shape'] == [2, 16, 16, 3] and manifest['output']['shape'] == [2, 10]
  assert manifest['max_relative_error']['onnx'] <= 1e-4
  session = export.onnx_session((tmp_path / 'out' / 'model.onnx').read_bytes())
  x = images(16, 2, seed=5)
  assert export._relative_error(session.run(None, {'images': x})[0], reference(model, variables, x)) <= 1e-4
  # --features: the pooled features, 64 channels of the last stage.
  manifest = export.export(str(workdir), ['onnx'], str(tmp_path / 'features'), features=True)
  assert manifest['output'] == {'name': 'features', 'shape': [None, 64], 'dtype': 'float32'}
  assert manifest['classes'] is None


def corrupt_run(tmp_path):
  workdir = tmp_path / 'corrupt'
  write_run(workdir)
  for root, _, files in os.walk(workdir / 'checkpoints' / '7'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as file:
        file.write(b'garbage')
  return workdir


BAD = {
    'no_checkpoint': (lambda run, tmp: ['--workdir', str(tmp / 'nothing'), '--out', str(tmp / 'o')],
                      'no checkpoints'),
    'unknown_format': (lambda run, tmp: ['--workdir', str(run), '--out', str(tmp / 'o'), '--format', 'stablehlo,pb'],
                       "unknown format 'pb'"),
    'savedmodel': (lambda run, tmp: ['--workdir', str(run), '--out', str(tmp / 'o'), '--format', 'savedmodel'],
                   'TensorFlow'),
    'bad_batch': (lambda run, tmp: ['--workdir', str(run), '--out', str(tmp / 'o'), '--batch', '0'],
                  'neither a positive number nor dynamic'),
    'word_batch': (lambda run, tmp: ['--workdir', str(run), '--out', str(tmp / 'o'), '--batch', 'many'],
                   'neither a positive number nor dynamic'),
    'out_in_checkpoints': (lambda run, tmp: ['--workdir', str(run), '--out', str(run / 'checkpoints' / 'x')],
                           'inside the checkpoints'),
    'unknown_step': (lambda run, tmp: ['--workdir', str(run), '--out', str(tmp / 'o'), '--step', '3'],
                     'no checkpoint for step 3'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_is_one_error_line_and_nothing_written(case, run, tmp_path, capsys):
  workdir = run[0]
  argv, message = BAD[case]
  before, before_run = snapshot(tmp_path), snapshot(workdir)
  status, stdout, stderr = cli(argv(workdir, tmp_path), capsys)
  assert status == 2, (stdout, stderr)
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], stderr
  assert snapshot(tmp_path) == before and snapshot(workdir) == before_run


def test_bad_input_non_empty_out_and_corrupt_checkpoint(run, tmp_path, capsys):
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  before = snapshot(tmp_path)
  status, _, stderr = cli(['--workdir', str(run[0]), '--out', str(out), '--format', 'stablehlo'], capsys)
  assert status == 2 and stderr.startswith('error: ') and '--overwrite' in stderr and len(stderr.splitlines()) == 1
  workdir = corrupt_run(tmp_path)
  before = snapshot(tmp_path)
  status, _, stderr = cli(['--workdir', str(workdir), '--out', str(tmp_path / 'o'), '--format', 'stablehlo'], capsys)
  assert status == 2 and stderr.startswith('error: ') and 'can be restored' in stderr, stderr
  assert len(stderr.splitlines()) == 1 and snapshot(tmp_path) == before


def test_missing_extra_names_it(run, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'onnx', None)  # `import onnx` raises ImportError
  status, _, stderr = cli(['--workdir', str(run[0]), '--out', str(tmp_path / 'o'), '--format', 'onnx'], capsys)
  assert status == 2 and "pip install 'resnet_jax[export]'" in stderr and len(stderr.splitlines()) == 1
  assert not (tmp_path / 'o').exists()


def test_a_loaded_bfloat16_run_exports_at_float32(tmp_path):
  """The Python API on a loaded run (no workdir): a bfloat16 network is exported, and checked, in float32."""
  model, variables = build('cifar_resnet20', dict(SMALL_CIFAR, dtype='bfloat16'), 16)
  loaded = checkpoints.LoadedCheckpoint(model=model, variables=variables,
                                        config=convert.converted_config('cifar_resnet20', 5), step=3)
  with pytest.raises(UserError, match='image_shape'):
    export.export(loaded, 'stablehlo', str(tmp_path / 'out'))
  manifest = export.export(loaded, 'stablehlo', str(tmp_path / 'out'), image_shape=(16, 16, 3), batch=2)
  assert manifest['max_relative_error']['stablehlo'] <= 1e-5 and manifest['source']['step'] == 3
  assert manifest['source']['workdir'] is None and manifest['input']['shape'] == [2, 16, 16, 3]
