r"""One lent GPU session's measurements (issue 28), as one script that fits a short lease.

  python benchmarks/gpu_session.py --phase 1 --out OUT_DIR [--budget_s 360] [--commit SHA]

Runs each step of the phase as its own process (XLA_FLAGS are per process), in priority order, skipping a step
when the time left under --budget_s is below its estimate; every figure is appended, one JSON object per line,
to OUT_DIR/results.jsonl (each record gets `session_step`, `commit` and `commit_source`), each step's output to
OUT_DIR/log.txt, and a short table is printed last. The persistent JAX compilation cache (/tmp/jaxcache) and the
torch inductor cache (/tmp/inductor_cache) are packed into OUT_DIR when small enough, so that a second session
started with them (--restore DIR) does not recompile the programs that did not change.

Phases:
  1  the baseline: the peers on ResNet-50 bs 256 bf16 (resnet_jax, resnet_jax with the BatchNorm before its
     written-out gradient, dm-haiku, torchvision with channels_last + bf16 autocast + torch.compile), one
     interleaved run; resnet_jax.benchmark on ResNet-50 bs 256 and CIFAR ResNet-110 bs 128 (20 steps per
     dispatch) with a profile by XLA operation, ResNet-110 with the BatchNorm before; ResNet-50 inference at batch
     1 and 256 beside torchvision; then, time permitting, first candidates (command buffers over convolutions and
     loops for ResNet-110; the max-pool gradient for ResNet-50).
  2  the round of changes the phase-1 profile points to, each before/after, and the peers again with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
JAX_CACHE = '/tmp/jaxcache'
INDUCTOR_CACHE = '/tmp/inductor_cache'
CMDBUF = '--xla_gpu_enable_command_buffer=+CONVOLUTION,+WHILE'

R50 = ['--synthetic', '--compilation_cache', JAX_CACHE, '--config', 'configs/imagenet.py',
       '--config.model.name=resnet50', '--config.model.dtype=auto', '--config.batch_norm.mode=global',
       '--batch_size', '256']
R110 = ['--synthetic', '--compilation_cache', JAX_CACHE, '--config', 'configs/default.py']


# --dry_run (a CPU check of this script): the same steps on tiny shapes.
DRY = {'active': False}


def _dry(args):
  if not DRY['active']:
    return args
  out, skip = [], False
  for a in args:
    if skip:
      skip = False
      continue
    if a in ('--steps', '--warmup', '--batch_size'):
      skip = True
      continue
    out.append(a)
  return out + ['--steps', '2', '--warmup', '1', '--batch_size', '4', '--config.input.image_size=64',
                '--config.model.name=' + ('resnet18' if 'configs/imagenet.py' in args else 'cifar_resnet20')]


def bench(tag, args, patches='', profile=None):
  item = {'tag': tag, 'patches': patches, 'args': _dry(list(args))}
  if profile:
    item['args'] += ['--profile', f'/tmp/profile_{tag}']
  return item


def r50(tag, steps=30, warmup=10, patches='', profile=False, extra=()):
  return bench(tag, R50 + ['--steps', str(steps), '--warmup', str(warmup), *extra], patches, profile)


def r110(tag, spd=20, steps=200, warmup=20, patches='', profile=False, extra=()):
  return bench(tag, R110 + [f'--config.steps_per_dispatch={spd}', '--steps', str(steps), '--warmup', str(warmup),
                            *extra], patches, profile)


def peers_cmd(impls, rounds=3, steps=10, tag=None):
  cmd = [PY, 'benchmarks/experiments/peers_patched.py', '--impls', impls, '--batch_size', '256',
         '--image_size', '224', '--dtype', 'bfloat16', '--rounds', str(rounds), '--steps', str(steps),
         '--warmup', '3']
  if DRY['active']:
    cmd = [PY, 'benchmarks/experiments/peers_patched.py', '--impls', impls, '--batch_size', '2', '--image_size',
           '64', '--dtype', 'float32', '--rounds', '1', '--steps', '1', '--warmup', '1']
  return cmd + (['--tag', tag] if tag else [])


# name -> (estimated seconds, command or ('bench', [items]), extra environment)
def phase_steps(phase: str):
  if phase == '1':
    return [
        ('peers', 170, peers_cmd('resnet_jax,resnet_jax+autodiff_bn,haiku,torchvision', tag='phase1_peers'), {}),
        ('bench_baseline', 110, ('bench', [r50('r50_bs256', profile=True),
                                           r110('r110_spd20', profile=True)]), {}),
        ('inference', 90, [PY, 'benchmarks/inference.py', '--rounds', '4', '--tag', 'phase1_inference',
                           *(['--batch_sizes', '1,2', '--image_size', '64', '--calls', '2']
                             if DRY['active'] else ['--batch_sizes', '1,256', '--calls', '50,10'])], {}),
        ('r110_bn_before', 45, ('bench', [r110('r110_spd20_autodiff_bn', patches='autodiff_bn')]), {}),
        ('r110_cmdbuf', 45, ('bench', [r110('r110_spd20_cmdbuf', profile=True)]), {'XLA_FLAGS': CMDBUF}),
        ('r50_maxpool', 30, ('bench', [r50('r50_bs256_gpu_maxpool', patches='gpu_maxpool')]), {}),
    ]
  if phase == '2':
    # The candidates planned before any GPU profile existed; prune to what phase 1's profile points to (--only).
    # Each is measured beside its own baseline in the same phase (the baselines load from the restored cache).
    return [
        ('r110_cmdbuf', 80, ('bench', [r110('r110_spd20_cmdbuf', profile=True),
                                       r110('r110_spd100_cmdbuf', spd=100, steps=400)]), {'XLA_FLAGS': CMDBUF}),
        ('r110_base', 40, ('bench', [r110('r110_spd20')]), {}),
        ('r110_scan_cmdbuf', 40, ('bench', [r110('r110_spd20_scan_cmdbuf', extra=['--config.model.scan_units=True'])]),
         {'XLA_FLAGS': CMDBUF}),
        ('r50_variants', 70, ('bench', [r50('r50_bs256'), r50('r50_bs256_gpu_maxpool', patches='gpu_maxpool',
                                                          profile=True)]), {}),
        ('r50_cmdbuf', 40, ('bench', [r50('r50_bs256_cmdbuf'), r50('r50_bs256_cmdbuf_gpu_maxpool',
                                                                   patches='gpu_maxpool')]), {'XLA_FLAGS': CMDBUF}),
        ('peers_final', 120, peers_cmd('resnet_jax,resnet_jax+gpu_maxpool,haiku,torchvision', tag='phase2_peers'),
         {'XLA_FLAGS': CMDBUF}),
        ('inference_cmdbuf', 60, [PY, 'benchmarks/inference.py', '--impls', 'resnet_jax', '--rounds', '4',
                                  '--tag', 'phase2_inference_cmdbuf',
                                  *(['--batch_sizes', '1,2', '--image_size', '64', '--calls', '2']
                                    if DRY['active'] else ['--batch_sizes', '1,256', '--calls', '50,10'])],
         {'XLA_FLAGS': CMDBUF}),
    ]
  raise SystemExit(f'unknown phase {phase!r}')


def environment_step(out_dir, log):
  """Device, driver, versions and XLA's GPU defaults that matter here (command buffers), 10 s or so."""
  script = r'''
import json, os, glob, subprocess, sys
import jax, jax.numpy as jnp
info = {"devices": [d.device_kind for d in jax.devices()], "jax": jax.__version__}
x = jnp.ones((256, 256), jnp.bfloat16)
jax.block_until_ready(jax.jit(lambda a: (a @ a).sum())(x))
opts = {}
for path in glob.glob("/tmp/xla_dump_env/**/compile_options.textproto", recursive=True):
  for line in open(path):
    line = line.strip()
    if any(k in line for k in ("command_buffer", "graph_min", "autotune_level", "while_loop_unrolling")):
      opts.setdefault(line.split(":")[0], set()).add(line.split(":", 1)[1].strip())
info["xla_defaults"] = {k: sorted(v) for k, v in opts.items()}
print("ENVINFO " + json.dumps(info))
'''
  env = dict(os.environ, XLA_FLAGS='--xla_dump_to=/tmp/xla_dump_env')
  result = subprocess.run([PY, '-c', script], env=env, capture_output=True, text=True, timeout=120)
  log.write(result.stdout + result.stderr)
  info = {}
  for line in result.stdout.splitlines():
    if line.startswith('ENVINFO '):
      info = json.loads(line[len('ENVINFO '):])
  # The candidate flags parse (an unknown enum value aborts the process).
  env = dict(os.environ, XLA_FLAGS=CMDBUF)
  check = subprocess.run([PY, '-c', 'import jax, jax.numpy as jnp; print(jax.jit(lambda a: a + 1)(jnp.ones(2)))'],
                         env=env, capture_output=True, text=True, timeout=120)
  info['cmdbuf_flags_parse'] = check.returncode == 0
  log.write(check.stdout + check.stderr[-2000:])
  try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,'
                          'power.limit,temperature.gpu', '--format=csv,noheader'], capture_output=True, text=True,
                         timeout=30)
    info['nvidia_smi'] = smi.stdout.strip()
  except (OSError, subprocess.SubprocessError) as error:
    info['nvidia_smi'] = f'unavailable: {error}'
  versions = subprocess.run([PY, '-m', 'pip', 'list', '--format=json'], capture_output=True, text=True)
  try:
    wanted = {'jax', 'jaxlib', 'jax-cuda13-plugin', 'flax', 'optax', 'torch', 'torchvision', 'triton',
              'dm-haiku', 'ml-collections', 'nvidia-cudnn-cu13', 'numpy'}
    info['packages'] = {p['name']: p['version'] for p in json.loads(versions.stdout) if p['name'].lower() in wanted}
  except ValueError:
    pass
  return info


def run_step(name, cmd, extra_env, timeout, out_dir, log):
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
             TORCHINDUCTOR_CACHE_DIR=INDUCTOR_CACHE, **extra_env)
  results = os.path.join(out_dir, 'results.jsonl')
  if isinstance(cmd, tuple):  # ('bench', items): benchmark runs in one process
    items = cmd[1]
    for item in items:
      item['args'] = item['args'] + ['--json', results]
    spec = f'/tmp/spec_{name}.json'
    with open(spec, 'w') as f:
      json.dump(items, f)
    cmd = [PY, 'benchmarks/experiments/multi_benchmark.py', spec]
  elif '--json' not in cmd:
    cmd = cmd + ['--json', results]
  log.write(f'\n===== {name}: {" ".join(shlex.quote(c) for c in cmd)}  (env {extra_env})\n')
  log.flush()
  started = time.time()
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    output, code = proc.stdout, proc.returncode
  except subprocess.TimeoutExpired as e:
    output, code = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or ''), 'timeout'
  log.write(output)
  log.flush()
  seconds = time.time() - started
  keep = [line for line in output.splitlines()
          if line.startswith(('done ', 'failed ', 'ratio', 'inference batch', 'summary', 'error'))
          or line.startswith(('resnet_jax', 'haiku', 'torchvision', 'implementation', 'skipped'))]
  print(f'[{name}] exit {code} in {seconds:.0f}s', flush=True)
  for line in keep:
    print('  ' + line[:300], flush=True)
  return seconds


def annotate(out_dir, commit, phase, started_at):
  """Adds the commit (the device's .git is not this checkout's) and the phase to every record of this session."""
  path = os.path.join(out_dir, 'results.jsonl')
  if not os.path.exists(path):
    return []
  records = [json.loads(line) for line in open(path) if line.strip()]
  for record in records:
    record['commit'] = commit
    record['commit_dirty'] = False
    record['commit_source'] = ('passed by benchmarks/gpu_session.py --commit: the tree ran is `git archive` of '
                               'this commit')
    record['session_phase'] = phase
  with open(path, 'w') as f:
    for record in records:
      f.write(json.dumps(record, sort_keys=True, default=str) + '\n')
  return records


def pack(directory, out_dir, name, max_parts=2, part_bytes=15 * 2**20):
  if not os.path.isdir(directory):
    return f'{name}: no {directory}'
  archive = f'/tmp/{name}.tgz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(directory, arcname=os.path.basename(directory))
  size = os.path.getsize(archive)
  if size > max_parts * part_bytes:
    return f'{name}: {size / 2**20:.1f} MiB, too large to bring back'
  with open(archive, 'rb') as f:
    for index in range(max_parts):
      chunk = f.read(part_bytes)
      if not chunk:
        break
      with open(os.path.join(out_dir, f'{name}.tgz.part{index}'), 'wb') as part:
        part.write(chunk)
  return f'{name}: {size / 2**20:.1f} MiB packed'


def restore(directory):
  """Unpacks NAME.tgz.part* found in `directory` into /tmp (the caches of an earlier session)."""
  done = []
  for name in ('jaxcache', 'inductor_cache'):
    parts = sorted(p for p in os.listdir(directory) if p.startswith(name + '.tgz.part'))
    if not parts:
      continue
    archive = f'/tmp/{name}_restored.tgz'
    with open(archive, 'wb') as f:
      for p in parts:
        f.write(open(os.path.join(directory, p), 'rb').read())
    with tarfile.open(archive) as tar:
      tar.extractall('/tmp')
    done.append(name)
  return done


def summarize(records):
  print('\n==== summary ====')
  for r in records:
    if r.get('mode') == 'train_step':
      kinds = r.get('profile_ms_per_step_by_kind') or []
      print(f"{r.get('tag', r.get('model')):<28} {r['step_ms']:8.2f} ms/step {r['images_per_sec']:9.0f} img/s "
            f"pipelined {r.get('images_per_sec_pipelined') or 0:9.0f}  compile {r['compile_s']:5.1f}s  "
            f"mfu {100 * (r.get('mfu') or 0):4.1f}%  peak {r.get('peak_memory_bytes', 0) / 1e9:5.1f} GB  "
            f"loss {r.get('train_loss')}")
      if 'profile_busy_ms_per_step' in r:
        print(f"   busy {r['profile_busy_ms_per_step']:.2f} ms/step, {r['profile_kernels_per_step']:.0f} kernels/step;"
              f" by kind: " + ', '.join(f'{k} {v}' for k, v in kinds[:8]))
      if 'profile_error' in r:
        print(f"   profile error: {r['profile_error']}")
    elif r.get('workload') == 'resnet50_train_step':
      print(f"peers ({r.get('tag')}): " + ', '.join(
          f"{k} {v['step_ms_median']:.2f} ms ({v['images_per_sec']:.0f} img/s, compile {v['compile_s']:.0f}s)"
          for k, v in r['results'].items()))
      print('   ratios (step time): ' + ', '.join(f'{k} {v:.3f}' for k, v in r['ratios_step_time'].items()))
    elif r.get('workload') == 'resnet50_inference':
      print(f"inference bs {r['batch_size']}: " + ', '.join(
          f"{k} {v['ms_median']:.3f} ms ({v['images_per_sec']:.0f} img/s)" for k, v in r['results'].items()))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--phase', required=True)
  p.add_argument('--out', default=os.environ.get('OUT', '/tmp/out'))
  p.add_argument('--budget_s', type=float, default=360)
  p.add_argument('--commit', default=None)
  p.add_argument('--restore', default=None, help='a folder holding jaxcache.tgz.part* / inductor_cache.tgz.part*')
  p.add_argument('--only', default=None, help='comma-separated step names')
  p.add_argument('--dry_run', action='store_true', help='tiny shapes: a CPU check of this script')
  args = p.parse_args()
  DRY['active'] = args.dry_run
  started = time.time()
  os.makedirs(args.out, exist_ok=True)
  log = open(os.path.join(args.out, 'log.txt'), 'a')
  if args.restore:
    print('restored caches: ', restore(args.restore), flush=True)
  try:
    info = environment_step(args.out, log)
  except Exception as error:  # pylint: disable=broad-except  (the measurements matter more)
    info = {'environment_error': f'{type(error).__name__}: {error}'}
  info.update(session_phase=args.phase, commit=args.commit, record='environment')
  with open(os.path.join(args.out, 'results.jsonl'), 'a') as f:
    f.write(json.dumps(info, sort_keys=True) + '\n')
  print('environment:', json.dumps(info), flush=True)
  steps = phase_steps(args.phase)
  if args.only:
    wanted = set(args.only.split(','))
    steps = [s for s in steps if s[0] in wanted]
  for name, estimate, cmd, extra_env in steps:
    left = args.budget_s - (time.time() - started)
    if left < estimate:
      print(f'[{name}] skipped: {left:.0f}s left, needs ~{estimate}s', flush=True)
      continue
    run_step(name, cmd, extra_env, timeout=max(60.0, left), out_dir=args.out, log=log)
  records = annotate(args.out, args.commit, args.phase, started)
  print(pack(JAX_CACHE, args.out, 'jaxcache'), flush=True)
  print(pack(INDUCTOR_CACHE, args.out, 'inductor_cache'), flush=True)
  summarize(records)
  print(f'total {time.time() - started:.0f}s', flush=True)


if __name__ == '__main__':
  main()
