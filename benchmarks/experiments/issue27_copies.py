r"""Issue 27: which operations of the CIFAR ResNet train step the layout copies come from, and their time.

Joins a jax.profiler trace of `python -m resnet_jax.benchmark --profile DIR` (device time per XLA operation) with
the optimised HLO dumped by the same run (`XLA_FLAGS=--xla_dump_to=DUMP --xla_dump_hlo_as_text`): for every
copy / transpose fusion, its shape, the JAX operation it came from (the HLO's op_name) and how many operands it
reads (a fusion that recomputes its input's producers reads many: the conv outputs, statistics and parameters of
every unit it recomputes).

  XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*jit_run.*" \
    python -m resnet_jax.benchmark --config configs/default.py --config.model.name=cifar_resnet20 --synthetic \
      --steps 3 --profile /tmp/prof --json /tmp/r20.jsonl
  python benchmarks/experiments/issue27_copies.py --trace /tmp/prof --dump /tmp/dump --label before --json out.json
"""

import argparse
import collections
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

LAYOUT_KINDS = ('copy_bitcast_fusion', 'transpose_copy_fusion', 'copy', 'wrapped_copy', 'transpose')


def hlo_instructions(dump_dir: str) -> dict[str, dict]:
  """name -> {shape, op_name, operands} for the ENTRY instructions of the train step's optimised HLO."""
  paths = sorted(glob.glob(os.path.join(dump_dir, '*jit_run.cpu_after_optimizations.txt')))
  if not paths:
    raise SystemExit(f'error: no *jit_run.cpu_after_optimizations.txt under {dump_dir}')
  text = open(paths[-1]).read()
  entry = text[text.index('\nENTRY'):]
  out = {}
  for line in entry.splitlines():
    m = re.match(r'\s+%(\S+) = (\S+) (\S+?)\((.*)', line)
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    op_name = re.search(r'op_name="([^"]+)"', line)
    operands = rest.split('), ')[0]
    out[name] = {'shape': shape.split('{')[0], 'opcode': opcode, 'operands': operands.count('%'),
                 'op_name': op_name.group(1).replace('jit(run)/', '') if op_name else None}
  return out


def _role(op: dict) -> str:
  kind = re.sub(r'\.\d+$', '', op['name'])
  dims = op.get('shape', '').split('[')[-1].rstrip(']').split(',')
  if kind == 'transpose_copy_fusion':
    return "kernel gradient: dy (B,H',W',O) -> (H',W',B,O)"
  if kind == 'copy_bitcast_fusion' and len(dims) == 4 and dims[:2] in (['3', '3'], ['1', '1'], ['7', '7']):
    return 'input gradient: kernel flipped, in/out swapped (HWIO)'
  if kind == 'copy_bitcast_fusion' and len(dims) == 4:
    return 'kernel gradient: x (B,H,W,C) -> (C,H,W,B) (operands > 1: its producers recomputed inside)'
  return 'other copies (RNG state, parameters, small tensors)'


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--trace', required=True)
  p.add_argument('--dump', required=True)
  p.add_argument('--steps', type=int, default=benchmark.PROFILE_DISPATCHES, help='steps in the trace')
  p.add_argument('--label', required=True)
  p.add_argument('--json', required=True, help='append one JSON line')
  args = p.parse_args()
  summary = benchmark.profile_summary(args.trace, args.steps, top=100000)
  hlo = hlo_instructions(args.dump)
  ops = []
  for name, ms in summary['profile_top_ops_ms_per_step']:
    kind = re.sub(r'\.\d+$', '', name)
    if kind in LAYOUT_KINDS or kind.startswith('copy') or 'transpose' in kind:
      info = hlo.get(name, {})
      ops.append({'name': name, 'ms_per_step': round(ms, 3), **info})
  by_source = collections.defaultdict(float)
  for op in ops:
    by_source[_role(op)] += op['ms_per_step']
  record = {'label': args.label, 'busy_ms_per_step': summary['profile_busy_ms_per_step'],
            'ms_per_step_by_kind': summary['profile_ms_per_step_by_kind'],
            'layout_ms_per_step_by_source': {k: round(v, 2) for k, v in sorted(by_source.items(), key=lambda kv: -kv[1])},
            'layout_ops': sorted(ops, key=lambda o: -o['ms_per_step'])}
  with open(args.json, 'a') as f:
    f.write(json.dumps(record, sort_keys=True) + '\n')
  print(json.dumps({k: record[k] for k in ('label', 'busy_ms_per_step', 'layout_ms_per_step_by_source')}, indent=1))
  for op in record['layout_ops'][:25]:
    print(f"{op['ms_per_step']:8.2f} ms  {op['name']:<28} {op.get('shape', ''):<20} operands {op.get('operands')}  "
          f"{op.get('op_name')}")


if __name__ == '__main__':
  main()
