"""resnet_jax.benchmark: the CLI's JSON record on a tiny config, FLOP accounting, peaks, input-only mode.

Timings are never asserted (the CI machine is shared); only that they are finite and positive.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import run_python
from resnet_jax import benchmark
from resnet_jax import config as config_lib
from resnet_jax.models import counting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'configs', 'quickstart.py')
TINY = ['--config.model.stage_widths=(8,16,16)', '--config.model.stage_sizes=(1,1,1)']
REQUIRED = ('images_per_sec', 'step_ms', 'compile_s', 'peak_memory_bytes', 'peak_memory_source', 'flops_per_step',
            'mfu', 'device_kind', 'device_count', 'jax_version', 'commit', 'config', 'date')


def _positive(record, key):
  value = record[key]
  assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_cli_appends_one_json_line_with_every_field(tmp_path):
  out = tmp_path / 'bench.jsonl'
  args = ['-m', 'resnet_jax.benchmark', '--config', 'configs/quickstart.py', '--json', str(out), '--synthetic',
          '--steps', '4', '--warmup', '1', '--batch_size', '16', '--peak_flops', '1e12', '--tag', 'ci', *TINY,
          '--config.steps_per_dispatch=2', '--profile', str(tmp_path / 'trace')]
  result = run_python(args, devices=1, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = out.read_text().splitlines()
  assert len(lines) == 1
  record = json.loads(lines[0])
  assert set(REQUIRED) <= set(record)
  for key in ('images_per_sec', 'step_ms', 'compile_s', 'peak_memory_bytes', 'flops_per_step', 'mfu',
              'images_per_sec_pipelined', 'max_rss_bytes'):
    _positive(record, key)
  assert record['mfu'] < 1.0 and record['peak_flops_per_device'] == 1e12
  assert record['device_count'] == 1 and record['device_kind'] and record['jax_version'] == jax.__version__
  assert record['batch_size'] == 16 and record['steps_per_dispatch'] == 2 and record['timed_steps'] == 4
  assert record['images_per_sec'] == pytest.approx(16 / (record['step_ms'] / 1e3))
  assert record['config']['model']['name'] == 'cifar_preact_resnet20' and record['config']['batch_size'] == 16
  assert record['pipeline'] == 'device' and record['synthetic'] and record['tag'] == 'ci'
  assert record['nonfinite_steps'] == 0 and math.isfinite(record['train_loss'])
  # The steps scan is one while loop: XLA counts its body once, which is one step.
  assert record['flops_source'] == 'xla cost_analysis'
  assert 0.3 < record['flops_per_step'] / record['jaxpr_conv_dot_flops_per_step'] < 3
  assert record['commit'] is None or len(record['commit']) == 40
  assert 'summary:' in result.stderr
  _positive(record, 'xla_bytes_accessed_per_dispatch_per_device')
  # --profile: a trace on disk and the device (here: host) time per step by XLA operation, convolutions among them.
  assert list((tmp_path / 'trace').rglob('*.xplane.pb')) and record['profile_dir'] == str(tmp_path / 'trace')
  _positive(record, 'profile_busy_ms_per_step')
  kinds = dict(record['profile_ms_per_step_by_kind'])
  assert any('conv' in kind or 'dot' in kind for kind in kinds), kinds
  assert len(record['profile_top_ops_ms_per_step']) <= 12


def test_bad_config_is_one_error_line(tmp_path):
  result = run_python(['-m', 'resnet_jax.benchmark', '--config', 'configs/quickstart.py', '--json',
                       str(tmp_path / 'x.jsonl'), '--config.batch_sise=3'], timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown config field 'batch_sise'")
  assert not (tmp_path / 'x.jsonl').exists()


def test_fed_step_in_process_on_two_devices_without_mfu():
  config = config_lib.build_config(QUICKSTART, [o[len('--config.'):].split('=', 1) for o in TINY])
  config.batch_size = 8
  record = benchmark.benchmark_train(config, steps=2, warmup=1, pipeline='grain', pipelined=False)
  assert record['device_count'] == 2 and record['pipeline'] == 'grain' and record['mfu'] is None
  for key in ('images_per_sec', 'step_ms', 'compile_s', 'peak_memory_bytes', 'flops_per_step'):
    _positive(record, key)
  json.dumps(record)


def test_input_only_device_resident():
  config = config_lib.build_config(QUICKSTART)
  record = benchmark.benchmark_input(config, steps=3, warmup=1, synthetic=True)
  assert record['mode'] == 'input_only' and record['pipeline'] == 'device' and record['image_shape'] == [8, 8, 1]
  _positive(record, 'images_per_sec')
  json.dumps(record)


def test_jaxpr_flops_count_scan_trips_and_loop_handling():
  x = jnp.ones((4, 8))
  w = jnp.ones((8, 8))
  def looped(x):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
  jaxpr = jax.make_jaxpr(looped)(x).jaxpr
  assert counting.jaxpr_macs(jaxpr) == 5 * 4 * 8 * 8
  assert counting.jaxpr_macs(jaxpr, loop_trips=False) == 4 * 8 * 8
  compiled = jax.jit(looped).lower(x).compile()
  flops = benchmark.step_flops(compiled, jaxpr, steps_per_dispatch=1, device_count=1)
  assert flops['xla_flops_per_dispatch_per_device'] == pytest.approx(2 * 4 * 8 * 8, rel=0.05)  # body once
  assert flops['flops_per_step'] == 5 * 2 * 4 * 8 * 8 and flops['flops_source'].startswith('jaxpr')
  # The same loop as the steps scan (5 steps per dispatch): XLA's count of the body is one step.
  flops = benchmark.step_flops(compiled, jaxpr, steps_per_dispatch=5, device_count=1)
  assert flops['flops_per_step'] == pytest.approx(2 * 4 * 8 * 8, rel=0.05)
  assert flops['flops_source'] == 'xla cost_analysis'


def test_peak_table_matches_device_kinds():
  assert benchmark.peak_flops_per_device('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4e12
  assert benchmark.peak_flops_per_device('NVIDIA H100 PCIe', 'bfloat16') == 756e12
  assert benchmark.peak_flops_per_device('NVIDIA H200', 'float32') == 494.7e12
  assert benchmark.peak_flops_per_device('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
  assert benchmark.peak_flops_per_device('TPU v4', 'float32') == 275e12
  assert benchmark.peak_flops_per_device('TPU v5 lite', 'bfloat16') == 197e12
  assert benchmark.peak_flops_per_device('cpu', 'float32') is None


def test_peers_cli_times_resnet_jax_beside_the_installed_peers(tmp_path):
  # benchmarks/peers.py (issue 6): the same ResNet-50 step in each implementation, interleaved, one JSON line.
  # haiku is timed where installed (`pip install -e ".[peers]"`), else reported as skipped; torchvision needs CUDA.
  out = tmp_path / 'peers.jsonl'
  result = run_python(['benchmarks/peers.py', '--impls', 'resnet_jax,haiku,torchvision', '--batch_size', '2',
                       '--image_size', '32', '--rounds', '2', '--steps', '1', '--warmup', '0', '--json', str(out)],
                      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(out.read_text())
  assert 'torchvision' in record['skipped']
  ours = record['results']['resnet_jax']
  assert ours['params'] == 25_557_032 and ours['timed_steps'] == 2 and math.isfinite(ours['final_mean_loss'])
  _positive(ours, 'step_ms_median')
  if 'haiku' in record['results']:
    assert record['results']['haiku']['params'] == ours['params']
    assert record['ratios_step_time']['resnet_jax/haiku'] > 0
    assert 'ratio resnet_jax/haiku step time' in result.stdout
  else:
    assert 'haiku' in record['skipped']
