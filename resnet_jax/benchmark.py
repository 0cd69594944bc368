r"""Benchmark the project's real train step: img/s, step time, compile time, peak memory, FLOPs, MFU.

  python -m resnet_jax.benchmark --config configs/quickstart.py --json runs/bench.jsonl --synthetic
  python -m resnet_jax.benchmark --config configs/default.py --config.model.name=cifar_resnet20 \
      --config.steps_per_dispatch=16 --synthetic --steps 64 --json runs/bench.jsonl
  python -m resnet_jax.benchmark --config configs/default.py --config.dataset.name=imagenet2012 \
      --config.model.name=resnet50 --batch_size 256 --synthetic --json benchmarks/results/resnet50.jsonl
  python -m resnet_jax.benchmark --config configs/default.py --input_only --synthetic --json runs/input.jsonl

Each run appends ONE JSON object (one line, JSON Lines) to `--json` and names the file on stdout (`--json -`:
prints the object instead). The config is loaded exactly as `resnet_jax.main` loads it (`configs/F.py[:ARG]` plus
`--config.a.b=v` overrides), so every config works.

What is measured (nothing is re-implemented: the step is `resnet_jax.train`'s):
  * Device-resident input (digits, CIFAR, ...; `--pipeline device`): `train.build_experiment` +
    `train.make_runner`, i.e. the very function the train loop dispatches: `config.steps_per_dispatch`
    steps (lax.scan) per call, batch gathered and augmented on the device, state and metrics donated.
  * Streamed input (ImageNet; `--pipeline grain`): `train.make_runner` on one streamed batch per call, the train loop's
    program for streamed data (state and metrics donated), fed one already-augmented uint8 batch per call (what Grain
    delivers; the host pipeline itself is measured by `--input_only`).
  * `--synthetic`: random uint8 images of the config's image shape replace the dataset (no download needed);
    the dataset's image shape, class count and size come from a table of known datasets (or
    `--image_shape/--num_classes/--num_examples`). Without it the config's real input is used.

Fields of the JSON object:
  images_per_sec      global batch / median wall time per step; each dispatch timed alone with
                      block_until_ready (steps_per_dispatch steps per dispatch)
  step_ms             median milliseconds per train step (same timing); step_ms_p10/p90 the spread
  images_per_sec_pipelined  the same number of steps dispatched back to back, one block at the end (how the
                      train loop runs: no host sync per step)
  compile_s           trace + lower + XLA compile of the step (lower_s, xla_compile_s: the two parts); with
                      --compilation_cache a warm cache shows up here
  peak_memory_bytes   device memory_stats()['peak_bytes_in_use'] where the backend has it (GPU, TPU); on CPU
                      the compiled step's memory_analysis() (arguments + outputs - donated aliases + temporaries,
                      per device). `peak_memory_source` says which; `max_rss_bytes` is the process's max RSS.
  flops_per_step      XLA cost analysis of the compiled step, per step and summed over devices. XLA counts a
                      while-loop body once: with steps_per_dispatch > 1 that body is one step; for loops inside
                      a step (model.scan_units) the step's convolution + matmul FLOPs are counted from its jaxpr
                      instead (trip counts included; within a few % of XLA's count of the unrolled model).
                      `flops_source` says which; `xla_flops_per_dispatch_per_device` keeps XLA's raw count.
  xla_bytes_accessed_per_dispatch_per_device  XLA's estimate of the bytes the step reads and writes (loop bodies
                      once): the figure a memory-bound change (BatchNorm, ReLU, additions) moves
  profile_*           with --profile DIR: device time per step by XLA operation from a jax.profiler trace of a
                      few extra steps (the trace itself is in DIR, for TensorBoard / Perfetto)
  mfu                 flops_per_step * steps/s / (peak FLOP/s per device * devices). Peaks: `PEAK_FLOPS` by
                      device kind and compute dtype, or --peak_flops (per device). null when unknown (CPU).
  device_kind, device_count, backend, jax_version, commit, config, date, argv, xla_flags, ...
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
from jax.profiler import ProfileData
import jaxlib
import numpy as np

from resnet_jax import classifier
from resnet_jax import config as config_lib
from resnet_jax import errors
from resnet_jax import parallel
from resnet_jax import state as state_lib
from resnet_jax import storage
from resnet_jax import train
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.data import streaming
from resnet_jax.data import throughput
from resnet_jax.errors import UserError
from resnet_jax.models import counting

# ----------------------------------------------------------------------------------------------------------
# Device peaks (dense, no sparsity), FLOP/s per JAX device. Sources: the vendors' spec sheets (H100 SXM: 989.4
# TFLOP/s bf16). TPU v2/v3 expose one JAX device per TensorCore (half a chip);
# v4 and later one per chip (megacore) or per single-core chip (v5e, v6e).
# Keys are matched as case-insensitive substrings of `device.device_kind`, the longest key first.

PEAK_FLOPS: dict[str, dict[str, float]] = {
    # NVIDIA: bfloat16 tensor-core peak; 'float32' is TF32 (what XLA uses for f32 convs/matmuls by default).
    'h100 pcie': {'bfloat16': 756.0e12, 'float32': 378.0e12},
    'h100 nvl': {'bfloat16': 835.0e12, 'float32': 417.5e12},
    'h100': {'bfloat16': 989.4e12, 'float32': 494.7e12},       # SXM (device_kind 'NVIDIA H100 80GB HBM3')
    'h200': {'bfloat16': 989.4e12, 'float32': 494.7e12},       # same compute as H100 SXM
    'gh200': {'bfloat16': 989.4e12, 'float32': 494.7e12},
    'b200': {'bfloat16': 2250.0e12, 'float32': 1100.0e12},
    'a100': {'bfloat16': 312.0e12, 'float32': 156.0e12},
    'l4': {'bfloat16': 121.0e12, 'float32': 60.0e12},
    # TPU: bfloat16 MXU peak; float32 matmuls run as multi-pass bf16 by default, so the bf16 peak is the roof.
    'tpu v2': {'bfloat16': 22.5e12},
    'tpu v3': {'bfloat16': 61.5e12},
    'tpu v4': {'bfloat16': 275.0e12},
    'tpu v5 lite': {'bfloat16': 197.0e12},                    # v5e
    'tpu v5e': {'bfloat16': 197.0e12},
    'tpu v5': {'bfloat16': 459.0e12},                         # v5p
    'tpu v6 lite': {'bfloat16': 918.0e12},                    # v6e (Trillium)
    'tpu v6e': {'bfloat16': 918.0e12},
}

# Datasets whose shape the benchmark knows without opening them (for --synthetic): image shape, classes,
# training examples, and whether the project streams them (Grain) or keeps them on the device.
KNOWN_DATASETS: dict[str, dict[str, Any]] = {
    'digits': {'image_shape': (8, 8, 1), 'num_classes': 10, 'num_examples': 1433, 'pipeline': 'device'},
    'mnist': {'image_shape': (28, 28, 1), 'num_classes': 10, 'num_examples': 60000, 'pipeline': 'device'},
    'cifar10': {'image_shape': (32, 32, 3), 'num_classes': 10, 'num_examples': 50000, 'pipeline': 'device'},
    'cifar100': {'image_shape': (32, 32, 3), 'num_classes': 100, 'num_examples': 50000, 'pipeline': 'device'},
    'svhn_cropped': {'image_shape': (32, 32, 3), 'num_classes': 10, 'num_examples': 73257, 'pipeline': 'device'},
    'imagenet2012': {'image_shape': None, 'num_classes': 1000, 'num_examples': 1281167, 'pipeline': 'grain'},
}

PIPELINES = ('auto', 'device', 'grain')


def peak_flops_per_device(device_kind: str, dtype_name: str) -> Optional[float]:
  kind = device_kind.lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      table = PEAK_FLOPS[key]
      return table.get(dtype_name, table.get('bfloat16'))
  return None


# ----------------------------------------------------------------------------------------------------------
# FLOPs.


def _cost(compiled, key: str) -> Optional[float]:
  """One figure of XLA's cost analysis of the compiled program ('flops', 'bytes accessed'), per device."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or key not in cost:
    return None
  return float(cost[key])


def step_flops(compiled, jaxpr, steps_per_dispatch: int, device_count: int) -> dict[str, Any]:
  """FLOPs of one train step summed over devices (see the module docstring), with how they were obtained."""
  xla = _cost(compiled, 'flops')  # per device, per dispatch, loop bodies once
  with_loops = 2 * counting.jaxpr_macs(jaxpr, loop_trips=True)   # global, per dispatch
  once = 2 * counting.jaxpr_macs(jaxpr, loop_trips=False)
  out = {'xla_flops_per_dispatch_per_device': xla,
         # XLA's estimate of the memory traffic (each operation's operands and outputs; loop bodies once): the
         # figure that moves when a memory-bound step (BatchNorm, ReLU, additions) reads and writes less.
         'xla_bytes_accessed_per_dispatch_per_device': _cost(compiled, 'bytes accessed'),
         'jaxpr_conv_dot_flops_per_step': with_loops / steps_per_dispatch}
  if xla is None:
    out.update(flops_per_step=with_loops / steps_per_dispatch or None,
               flops_source='jaxpr conv/dot FLOPs (no XLA cost analysis on this backend)')
    return out
  total = xla * device_count
  if once and total < 0.7 * once:
    # XLA's count misses work it hands to libraries: on GPU the convolutions become cuDNN custom calls, which
    # cost analysis does not count (ResNet-50 bs 256 on an H100: 0.12 TFLOP of the 7.2 a step does).
    out.update(flops_per_step=with_loops / steps_per_dispatch,
               flops_source='jaxpr conv+dot FLOPs (XLA cost analysis does not count library convolutions)')
  elif once and with_loops > once and total < 0.7 * with_loops:
    # XLA counted each loop body once. The steps scan's body is one step, so with no other loop XLA's count is
    # the step's. Loops inside a step (scanned units) cannot be scaled reliably from outside (XLA counts the
    # convolutions of a loop body differently from the unrolled ones), so the step's conv + dot FLOPs from the
    # jaxpr are used: within a few % of XLA's count of the unrolled model (which adds elementwise work).
    if abs(with_loops / once / steps_per_dispatch - 1) < 1e-9:
      out.update(flops_per_step=total, flops_source='xla cost_analysis')
    else:
      out.update(flops_per_step=with_loops / steps_per_dispatch,
                 flops_source='jaxpr conv+dot FLOPs (loops inside the step; XLA counts loop bodies once)')
  else:
    out.update(flops_per_step=total / steps_per_dispatch, flops_source='xla cost_analysis')
  return out


# ----------------------------------------------------------------------------------------------------------
# Memory and environment.


def max_rss_bytes() -> int:
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def peak_memory(compiled) -> dict[str, Any]:
  """Peak device memory: the allocator's peak where the backend reports it, else XLA's static estimate."""
  out: dict[str, Any] = {'max_rss_bytes': max_rss_bytes()}
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and stats.get('peak_bytes_in_use'):
    out.update(peak_memory_bytes=int(stats['peak_bytes_in_use']),
               peak_memory_source="device memory_stats()['peak_bytes_in_use'] (device 0)")
    return out
  analysis = None
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    analysis = None
  if analysis is not None:
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes)
    out.update(peak_memory_bytes=int(peak),
               peak_memory_source='compiled memory_analysis(): arguments + outputs - aliased + temporaries '
                                  '(per device)',
               memory_analysis={name: int(getattr(analysis, name)) for name in (
                   'argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes',
                   'temp_size_in_bytes', 'generated_code_size_in_bytes')})
    return out
  out.update(peak_memory_bytes=out['max_rss_bytes'], peak_memory_source='process max RSS')
  return out


def git_commit() -> dict[str, Any]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True, timeout=20)
  try:
    head = git('rev-parse', 'HEAD')
    if head.returncode:
      return {'commit': None}
    dirty = git('status', '--porcelain', '--untracked-files=no')
    return {'commit': head.stdout.strip(), 'commit_dirty': bool(dirty.stdout.strip())}
  except (OSError, subprocess.SubprocessError):
    return {'commit': None}


def environment() -> dict[str, Any]:
  devices = jax.devices()
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device_kind': devices[0].device_kind, 'device_count': len(devices), 'backend': jax.default_backend(),
      'process_count': jax.process_count(), 'jax_version': jax.__version__,
      'jaxlib_version': getattr(jaxlib, '__version__', None), 'flax_version': flax.__version__,
      'python': platform.python_version(), 'host_cpu_count': os.cpu_count(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compilation_cache_dir': jax.config.jax_compilation_cache_dir, **git_commit()}


# ----------------------------------------------------------------------------------------------------------
# Synthetic data.


def dataset_facts(config, image_shape=None, num_classes=None, num_examples=None) -> dict[str, Any]:
  """Image shape, classes, examples and pipeline of the config's training split, without reading its images."""
  name = config.dataset.name
  facts = dict(KNOWN_DATASETS.get(name, {}))
  if not facts:
    try:
      source = sources.open_split(name, config.dataset.train_split, config.dataset.get('data_dir'))
      facts = {'image_shape': source.image_shape, 'num_classes': source.num_classes,
               'num_examples': len(source), 'pipeline': 'device' if source.image_shape else 'grain'}
    except UserError:
      if image_shape is None or num_classes is None:
        raise UserError(f"--synthetic does not know dataset {name!r} and cannot open it; give --image_shape "
                        "H,W,C and --num_classes") from None
  if facts.get('image_shape') is None:  # variable-size images: the training crop (config.input.image_size)
    size = int((config.get('input') or {}).get('image_size', 224) or 224)
    facts['image_shape'] = (size, size, 3)
  if image_shape is not None:
    facts['image_shape'] = tuple(int(v) for v in image_shape)
  if num_classes is not None:
    facts['num_classes'] = int(num_classes)
  if num_examples is not None:
    facts['num_examples'] = int(num_examples)
  facts.setdefault('num_examples', 10 * config.batch_size)
  facts.setdefault('pipeline', 'device')
  return facts


def synthetic_source(name: str, split: str, image_shape, num_classes: int, num_examples: int, seed: int = 0):
  """An ExampleSource of uniformly random uint8 images and labels (same interface as a real split)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples,) + tuple(image_shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, (num_examples,), dtype=np.int32)

  def read(indices):
    indices = np.asarray(indices, np.int64)
    return {'image': images[indices], 'label': labels[indices]}

  return sources.ExampleSource(dataset=name, split=split, num_classes=int(num_classes),
                               image_shape=tuple(image_shape), num_examples=int(num_examples), read_fn=read)


def synthetic_splits(config, facts: dict[str, Any]) -> tuple[sources.ExampleSource, sources.ExampleSource]:
  """(train, eval) splits of synthetic data with the shape of the config's dataset, for build_experiment."""
  name = config.dataset.name
  train_split = synthetic_source(name, config.dataset.train_split, facts['image_shape'], facts['num_classes'],
                                 facts['num_examples'], seed=0)
  eval_split = synthetic_source(name, config.dataset.eval_split, facts['image_shape'], facts['num_classes'],
                                config.get('eval_batch_size', 8), seed=1)
  return train_split, eval_split


# ----------------------------------------------------------------------------------------------------------
# The train-step benchmark.


def _percentile(values, q):
  return float(np.percentile(np.asarray(values), q))


def _time_dispatches(call, carry, count: int, sync_each: bool):
  """Runs `carry = call(carry)` `count` times; per-call seconds (sync_each) or the total seconds."""
  times = []
  start = time.perf_counter()
  for _ in range(count):
    call_started = time.perf_counter()
    carry = call(carry)
    if sync_each:
      jax.block_until_ready(carry)
      times.append(time.perf_counter() - call_started)
  jax.block_until_ready(carry)
  return carry, (times if sync_each else time.perf_counter() - start)


PROFILE_DISPATCHES = 3


def profile_summary(trace_dir: str, steps: int, top: int = 12) -> dict[str, Any]:
  """Device time per step by XLA operation, from the jax.profiler trace in `trace_dir` (`steps` train steps).

  Accelerators: the kernels on the device planes' stream lines, each attributed to its HLO operation (a fusion,
  a cuDNN convolution custom-call, ...). CPU: the host's XLA thunks. Returns the busy time per step, the time per
  step by kind of operation (the HLO name without its numeric suffix: 'loop_fusion', 'input_reduce_fusion',
  'cudnn-conv', ...) and the `top` operations."""
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True), key=os.path.getmtime)
  if not files:
    return {'profile_error': f'no .xplane.pb under {trace_dir}'}
  data = ProfileData.from_file(files[-1])
  planes = list(data.planes)
  device_planes = [plane for plane in planes if plane.name.startswith('/device:') and 'CUSTOM' not in plane.name]
  by_op: dict[str, float] = {}
  kernels = 0
  for plane in device_planes or [plane for plane in planes if plane.name.startswith('/host:CPU')]:
    for line in plane.lines:
      if device_planes and not line.name.startswith('Stream'):
        continue  # derived lines ('XLA Ops', 'XLA Modules', ...) repeat the stream's kernels
      for event in line.events:
        stats = dict(event.stats or ())
        op = stats.get('hlo_op') or (event.name if device_planes else None)
        if op is None:
          continue
        by_op[str(op)] = by_op.get(str(op), 0.0) + event.duration_ns / 1e6
        kernels += 1
  if not by_op:
    return {'profile_error': 'no XLA operations found in the trace', 'profile_planes': [plane.name for plane in planes]}
  by_kind: dict[str, float] = {}
  for op, ms in by_op.items():
    kind = re.sub(r'(\.\d+)+$', '', op)
    by_kind[kind] = by_kind.get(kind, 0.0) + ms
  def per_step(table, count):
    ranked = sorted(table.items(), key=lambda name_and_ms: -name_and_ms[1])[:count]
    return [[name, round(ms / steps, 4)] for name, ms in ranked]
  return {'profile_dir': trace_dir, 'profile_busy_ms_per_step': sum(by_op.values()) / steps,
          'profile_kernels_per_step': kernels / steps, 'profile_ms_per_step_by_kind': per_step(by_kind, 20),
          'profile_top_ops_ms_per_step': per_step(by_op, top)}


def benchmark_train(config, *, steps: int = 20, warmup: int = 2, synthetic: bool = True, pipeline: str = 'auto',
                    pipelined: bool = True, peak_flops: Optional[float] = None, image_shape=None,
                    num_classes=None, num_examples=None, profile_dir: Optional[str] = None) -> dict[str, Any]:
  """Measures the project's train step for `config` (see the module docstring); returns the JSON record."""
  if pipeline not in PIPELINES:
    raise UserError(f"--pipeline {pipeline!r}: choose one of {', '.join(PIPELINES)}")
  if steps < 1 or warmup < 0:
    raise UserError('--steps must be >= 1 and --warmup >= 0')
  mesh = parallel.make_mesh()
  devices = mesh.devices.size
  batch = config.batch_size
  facts = dataset_facts(config, image_shape, num_classes, num_examples) if synthetic else None
  if pipeline == 'auto':
    pipeline = facts['pipeline'] if synthetic else None  # real input: whatever build_experiment chose (below)

  started = time.perf_counter()
  if pipeline == 'grain' and synthetic:
    # Streamed data, synthetic: the model, optimizer and schedule come from build_experiment on a small
    # synthetic stand-in of the split (its resident copy is not used); device batches are fed below.
    stand_in = dict(facts, num_examples=max(batch, 2 * devices))
    splits = synthetic_splits(config, stand_in)
  else:
    splits = synthetic_splits(config, facts) if synthetic else None
  experiment = train.build_experiment(config, mesh, splits=splits)
  setup_s = time.perf_counter() - started
  streamed = experiment.train_data.pipeline == 'grain'
  if pipeline is None:
    pipeline = 'grain' if streamed else 'device'
  if pipeline == 'device' and streamed:
    raise UserError(f"{config.dataset.name} is streamed (Grain), not device-resident; use --pipeline grain or auto")
  state = state_lib.init_train_state(experiment.model, experiment.tx, experiment.image_shape, config.seed, mesh,
                                     ema=bool(config.ema.decay))
  totals = jax.device_put(train.zero_accumulator(), parallel.replicated(mesh))

  if pipeline == 'device':
    steps_per_call = max(1, int(config.get('steps_per_dispatch', 1) or 1))
    resident_steps = train.make_runner(experiment.model, experiment.tx, experiment.augment, experiment.config,
                                       mesh, experiment.train_data.batch_in_program)
    arrays = experiment.train_data.arrays
    trace_started = time.perf_counter()
    traced = resident_steps.trace(state, totals, arrays, steps_per_call)
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    call = lambda carry: compiled(carry[0], carry[1], arrays)
  else:
    steps_per_call = 1
    # The streamed input's device operations (the flip: crops happen on the host), whatever the stand-in.
    device_augment = (experiment.augment if streamed else
                      pipelines.device_augmentation(pipelines.input_options(config), 'inception', None))
    fed_step = train.make_runner(experiment.model, experiment.tx, device_augment, experiment.config, mesh,
                                 streaming.StreamingTrainData.batch_in_program)
    if synthetic:
      # Two device batches alternate (a new input buffer each step, as a prefetching pipeline delivers them).
      rng = np.random.default_rng(config.seed)
      host = [{'image': rng.integers(0, 256, (batch,) + tuple(experiment.image_shape), dtype=np.uint8),
               'label': rng.integers(0, experiment.num_classes, (batch,), dtype=np.int32)} for _ in range(2)]
      local = parallel.local_batch_slice(batch, mesh)
      batches = [parallel.host_to_global({key: value[local] for key, value in host_batch.items()}, mesh, batch)
                 for host_batch in host]
      next_batch = lambda index: batches[index % 2]
    elif streamed:
      next_batch = lambda index: next(experiment.train_data)
    else:
      raise UserError(f"--pipeline grain needs --synthetic or a streamed dataset; {config.dataset.name} is "
                      "device-resident (use --pipeline device)")
    trace_started = time.perf_counter()
    traced = fed_step.trace(state, totals, next_batch(0), 1)
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    counter = iter(range(1, 10**12))
    call = lambda carry: compiled(carry[0], carry[1], next_batch(next(counter)))

  carry = (state, totals)
  dispatches = max(1, math.ceil(steps / steps_per_call))
  carry, _ = _time_dispatches(call, carry, max(1, math.ceil(warmup / steps_per_call)) if warmup else 0, sync_each=True)
  carry, times = _time_dispatches(call, carry, dispatches, sync_each=True)
  record: dict[str, Any] = {}
  if pipelined:
    carry, total = _time_dispatches(call, carry, dispatches, sync_each=False)
    record['images_per_sec_pipelined'] = dispatches * steps_per_call * batch / total
  if profile_dir:
    # A few more dispatches under the profiler, after the timing (the trace costs time; it is not in the numbers).
    with jax.profiler.trace(profile_dir):
      carry, _ = _time_dispatches(call, carry, PROFILE_DISPATCHES, sync_each=True)
    record.update(profile_summary(profile_dir, PROFILE_DISPATCHES * steps_per_call))
  step_seconds = [seconds / steps_per_call for seconds in times]
  median = float(np.median(step_seconds))
  summary = parallel.fetch(carry[1])
  examples = float(summary['examples'])

  flops = step_flops(compiled, traced.jaxpr.jaxpr, steps_per_call, devices)
  dtype = jnp.dtype(classifier.compute_dtype(config.model.get('dtype', 'auto'))).name
  env = environment()
  peak = peak_flops
  peak_source = '--peak_flops' if peak_flops else None
  if peak is None:
    peak = peak_flops_per_device(env['device_kind'], dtype) if env['backend'] != 'cpu' else None
    peak_source = f'PEAK_FLOPS[{env["device_kind"]!r}, {dtype}]' if peak else None
  mfu = None
  if peak and flops.get('flops_per_step'):
    mfu = flops['flops_per_step'] / median / (peak * devices)

  record.update({
      'mode': 'train_step', 'model': config.model.name, 'dataset': config.dataset.name,
      'synthetic': bool(synthetic), 'pipeline': pipeline, 'batch_size': batch,
      'image_shape': list(experiment.image_shape),
      'compute_dtype': dtype, 'steps_per_dispatch': steps_per_call,
      'images_per_sec': batch / median, 'step_ms': 1e3 * median,
      'step_ms_p10': 1e3 * _percentile(step_seconds, 10), 'step_ms_p90': 1e3 * _percentile(step_seconds, 90),
      'timed_steps': dispatches * steps_per_call, 'warmup_steps': warmup,
      'compile_s': compiled_at - trace_started, 'lower_s': lowered_at - trace_started,
      'xla_compile_s': compiled_at - lowered_at, 'setup_s': setup_s,
      **peak_memory(compiled), **flops,
      'peak_flops_per_device': peak, 'peak_flops_source': peak_source, 'mfu': mfu,
      'train_loss': float(summary['loss']) / examples if examples else None,
      'nonfinite_steps': int(summary['nonfinite_steps']),
      **env})
  return record


# ----------------------------------------------------------------------------------------------------------
# Input only.


def benchmark_input(config, *, steps: int = 50, warmup: int = 3, synthetic: bool = True, pipeline: str = 'auto',
                    worker_counts: Optional[Sequence[int]] = None, image_shape=None, num_classes=None,
                    num_examples=None) -> dict[str, Any]:
  """Throughput of the config's input pipeline alone (no model), via resnet_jax.data.throughput."""
  facts = dataset_facts(config, image_shape, num_classes, num_examples)
  if pipeline == 'auto':
    pipeline = facts['pipeline']
  mesh = parallel.make_mesh()
  record: dict[str, Any] = {'mode': 'input_only', 'dataset': config.dataset.name, 'pipeline': pipeline,
                            'synthetic': True, 'batch_size': config.batch_size}
  if not synthetic:
    record['note'] = 'input_only always measures synthetic data of the config\'s shapes'
  if pipeline == 'device':
    result = throughput.device_augment_throughput(
        num_examples=facts['num_examples'], image_shape=facts['image_shape'], batch_size=config.batch_size,
        steps=steps, warmup=warmup, seed=int(config.seed), mesh=mesh)
    record.update(images_per_sec=result['images_per_sec'], compile_s=result['compile_seconds'],
                  image_shape=list(facts['image_shape']), details=result)
  else:
    inputs = config.get('input') or {}
    get = lambda key, default: inputs.get(key, default) if inputs.get(key, default) is not None else default
    workers = worker_counts if worker_counts is not None else sorted({0, max(1, (os.cpu_count() or 2) - 1)})
    data_dir = None
    if not synthetic and str(config.dataset.name).startswith('folder:'):
      data_dir = config.dataset.name[len('folder:'):]
    result = throughput.grain_imagenet_throughput(
        worker_counts=tuple(workers), batch_size=config.batch_size, batches=steps,
        image_size=int(get('image_size', 224)),
        train_crop='inception' if get('train_crop', 'auto') == 'auto' else get('train_crop', 'inception'),
        color_jitter=float(get('color_jitter', 0.0)), pca_lighting=float(get('pca_lighting', 0.0)),
        num_threads=int(get('num_threads', 1)), data_dir=data_dir, mesh=mesh,
        auto_augment=str((config.get('augment') or {}).get('auto_augment') or ''))
    best = max(result['results'], key=lambda r: r['images_per_sec'])
    record.update(images_per_sec=best['images_per_sec'], num_workers=best['num_workers'],
                  compile_s=None, details=result)
  record.update({'peak_memory_bytes': max_rss_bytes(), 'peak_memory_source': 'process max RSS', **environment()})
  return record


# ----------------------------------------------------------------------------------------------------------
# Command line.


def _shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(v) for v in text.replace('x', ',').split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected H,W,C such as 32,32,3, got {text!r}') from None
  if len(shape) != 3 or min(shape) < 1:
    raise argparse.ArgumentTypeError(f'expected H,W,C such as 32,32,3, got {text!r}')
  return shape


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.benchmark', description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog='Config fields are overridden with --config.a.b=value, as for resnet_jax.main.')
  parser.add_argument('--config', required=True, help='configs/F.py[:ARG]')
  parser.add_argument('--json', required=True, help='append one JSON line per run to this file ("-": stdout only)')
  parser.add_argument('--steps', type=int, default=20, help='timed train steps (whole dispatches; default 20)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling (default 2)')
  parser.add_argument('--batch_size', type=int, default=None, help='global batch (default: config.batch_size)')
  parser.add_argument('--synthetic', action='store_true', help="random uint8 images of the config's shape")
  parser.add_argument('--input_only', action='store_true', help='measure only the input pipeline')
  parser.add_argument('--pipeline', choices=PIPELINES, default='auto',
                 help='device: device-resident data + train.make_runner; grain: one device batch per '
                      'call (streamed datasets); auto: by dataset')
  parser.add_argument('--peak_flops', type=float, default=None, help='peak FLOP/s per device for mfu')
  parser.add_argument('--no_pipelined', action='store_true', help='skip the back-to-back (unsynchronised) timing')
  parser.add_argument('--compilation_cache', default=None,
                 help='persistent compilation cache directory (jax_compilation_cache_dir); default '
                      '$JAX_COMPILATION_CACHE_DIR or none')
  parser.add_argument('--image_shape', type=_shape, default=None, help='H,W,C for --synthetic on unknown datasets')
  parser.add_argument('--num_classes', type=int, default=None)
  parser.add_argument('--num_examples', type=int, default=None, help='synthetic training-split size')
  parser.add_argument('--workers', default=None, help='--input_only on streamed data: Grain worker counts, e.g. 0,1,3')
  parser.add_argument('--profile', default=None, metavar='DIR',
                 help='after timing, trace a few steps with jax.profiler into DIR (TensorBoard / Perfetto) and add '
                      'the device time per step by XLA operation to the record (profile_* fields)')
  parser.add_argument('--tag', default=None, help='free text stored in the record (e.g. an experiment name)')
  return parser


def check_output_path(path: str) -> None:
  """Raises UserError unless `path` can be appended to (or created, with its missing folders)."""
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise UserError(f"--json {path} is a directory; name a file in it, e.g. {os.path.join(path, 'bench.jsonl')}")
  existing = storage.existing_ancestor(full)
  if existing != full and not os.path.isdir(existing):
    raise UserError(f"--json {path} cannot be created: {existing} is a file, not a directory")
  if not os.access(existing, os.W_OK | (os.X_OK if existing != full else 0)):
    raise UserError(f"--json {path} is not writable; choose a writable file, or - for stdout only")


def run(argv: Sequence[str]) -> dict[str, Any]:
  rest, overrides = config_lib.split_override_args(list(argv))
  args = make_parser().parse_args(rest)
  if args.compilation_cache:
    train.enable_compilation_cache(args.compilation_cache)
  config = config_lib.build_config(args.config, overrides)
  if args.json != '-':  # checked before running (and writing nothing): a record lost after the run helps no one
    check_output_path(args.json)
  if args.batch_size is not None:
    if args.batch_size <= 0:
      raise UserError(f'--batch_size must be positive, got {args.batch_size}')
    config.batch_size = int(args.batch_size)
  data_options = dict(synthetic=args.synthetic, pipeline=args.pipeline, image_shape=args.image_shape,
                      num_classes=args.num_classes, num_examples=args.num_examples)
  if args.input_only:
    workers = None if args.workers is None else [int(w) for w in args.workers.split(',')]
    record = benchmark_input(config, steps=args.steps, warmup=args.warmup, worker_counts=workers, **data_options)
  else:
    record = benchmark_train(config, steps=args.steps, warmup=args.warmup, pipelined=not args.no_pipelined,
                             peak_flops=args.peak_flops, profile_dir=args.profile, **data_options)
  record['argv'] = list(argv)
  if args.tag is not None:
    record['tag'] = args.tag
  record['config'] = json.loads(config_lib.to_json(config))
  line = json.dumps(record, sort_keys=True, default=str)
  if args.json != '-':
    directory = os.path.dirname(os.path.abspath(args.json))
    os.makedirs(directory, exist_ok=True)
    with open(args.json, 'a') as f:
      f.write(line + '\n')
    print(f'record appended to {args.json}')  # the record itself is in the file (and its summary on stderr)
  else:
    print(line)
  return record


def main() -> None:
  with errors.exit_on_error():
    record = run(sys.argv[1:])
  summary = {key: record.get(key) for key in ('mode', 'model', 'batch_size', 'images_per_sec', 'step_ms',
                                              'compile_s', 'peak_memory_bytes', 'flops_per_step', 'mfu')}
  print('summary: ' + ', '.join(f'{key}={value:.4g}' if isinstance(value, float) else f'{key}={value}'
                                for key, value in summary.items()), file=sys.stderr)


if __name__ == '__main__':
  main()
