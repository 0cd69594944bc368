r"""A/B (or A/B/C...) comparisons of `python -m resnet_jax.benchmark` runs, interleaved over rounds.

Variants that must differ per process (XLA_FLAGS, a cold vs warm compilation cache, config overrides) run as
separate processes, alternating A, B, A, B, ... (order reversed every round), so a noisy shared machine slows
them alike; the report is the median of each field per variant and the ratio to the first variant.

  python benchmarks/compare.py --rounds 3 --json /tmp/flags.jsonl \
      --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 20" \
      --variant "base::" \
      --variant "fast_math:XLA_FLAGS=--xla_cpu_enable_fast_math=true:"

A variant is NAME:ENV:ARGS, with ENV a space-separated list of VAR=VALUE and ARGS extra benchmark arguments.
ENV may set RUNNER=benchmarks/experiments/patched_benchmark.py (with PATCHES=...) to measure a proposed change
to another module without editing it.
Each variant's records (one per round) are appended to --json with `tag` = NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

FIELDS = ('step_ms', 'images_per_sec', 'images_per_sec_pipelined', 'compile_s', 'lower_s', 'xla_compile_s',
          'peak_memory_bytes', 'flops_per_step', 'xla_bytes_accessed_per_dispatch_per_device')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
  name, _, rest = text.partition(':')
  env_text, _, args_text = rest.partition(':')
  env = dict(item.split('=', 1) for item in shlex.split(env_text))
  return name, env, shlex.split(args_text)


def run_variant(name, env, args, common, out_path, timeout):
  full_env = dict(os.environ)
  full_env.setdefault('JAX_PLATFORMS', 'cpu')
  full_env.update(env)
  runner = full_env.pop('RUNNER', None)  # e.g. benchmarks/experiments/patched_benchmark.py
  with tempfile.NamedTemporaryFile('r', suffix='.jsonl', delete=False) as tmp:
    path = tmp.name
  entry = [runner] if runner else ['-m', 'resnet_jax.benchmark']
  cmd = [sys.executable, *entry, *common, *args, '--json', path, f'--tag={name}']
  result = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    raise SystemExit(f'variant {name} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  record = json.loads(open(path).read().splitlines()[-1])
  os.unlink(path)
  record['variant_env'] = env
  if out_path:
    with open(out_path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
  return record


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--common', default='', help='arguments shared by every variant')
  p.add_argument('--variant', action='append', required=True, help='NAME:ENV:ARGS (see the module docstring)')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--json', default=None)
  p.add_argument('--timeout', type=int, default=3600)
  args = p.parse_args(argv)
  common = shlex.split(args.common)
  variants = [parse_variant(v) for v in args.variant]
  records = {name: [] for name, _, _ in variants}
  for r in range(args.rounds):
    for name, env, extra in (variants if r % 2 == 0 else variants[::-1]):
      record = run_variant(name, env, extra, common, args.json, args.timeout)
      records[name].append(record)
      shown = ', '.join(f'{field} {record[field]:.4g}' for field in ('step_ms', 'images_per_sec', 'compile_s')
                        if record.get(field) is not None)  # input_only records have no step time
      print(f'round {r + 1} {name}: {shown}', flush=True)
  base = variants[0][0]
  summary = {}
  for name, recs in records.items():
    summary[name] = {f: float(np.median([x[f] for x in recs if x.get(f) is not None]))
                     for f in FIELDS if any(x.get(f) is not None for x in recs)}
  print(f'\nmedians over {args.rounds} rounds (ratio to {base}):')
  for name, med in summary.items():
    parts = []
    for f in ('step_ms', 'images_per_sec', 'images_per_sec_pipelined', 'compile_s', 'peak_memory_bytes'):
      if f in med:
        ratio = med[f] / summary[base][f] if summary[base].get(f) else float('nan')
        parts.append(f'{f} {med[f]:.4g} (x{ratio:.3f})')
    print(f'  {name}: ' + ', '.join(parts))
  return summary


if __name__ == '__main__':
  main()
