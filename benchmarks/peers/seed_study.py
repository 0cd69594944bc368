r"""Seeds of resnet_jax and of the PyTorch reference trained independently on a held-out split of the real CIFAR-10
subset (issue 22, item 3): each run its own initialisation and data order, as one would run them.

  python benchmarks/peers/seed_study.py --data cifar10_train_5k.npz --out runs/seed_study --seeds 3 \
      --steps 540,2000 --jobs 4 [--variants ...] [--json results.json]

The split: a permutation with seed 22 of the file's examples, the last --test_examples (500) held out, the rest
(4,585 of 5,085) for training, written to OUT/data/{train,test}.npz. Recipe for every run: ResNet-20, batch 128,
SGD 0.1, momentum 0.9, weight decay 1e-4 on all parameters, lr / 10 at 50% and 75% of the steps, no warm-up,
pad-4 crop + flip, float32 (TF32 off in both), test accuracy on the held-out 500 with the running BN statistics.

Variants (one independent choice each; see VARIANTS):
  jax_cifar_row      resnet_jax as the repository runs the paper row: `configs/cifar.py:resnet20` (per-pixel mean,
                     std 1; BN statistics per 64 examples, the papers' two GPUs).
  jax_per_channel    the same with per-channel normalisation.
  jax_reference_conv per-channel normalisation and BN over the whole batch of 128: the reference's conventions
                     (tests/test_training_parity.py proves this step equal to the reference's).
  jax_cifar_row_ema  jax_cifar_row keeping an EMA of the weights (timm's 0.9998 with its warm-up ramp).
  jax_modern         the modern CIFAR row `configs/cifar.py:resnet20_modern` (cosine, label smoothing, mixup/CutMix,
                     TrivialAugmentWide, EMA; its own comment cites each); the schedule's boundaries are unused.
  jax_modern_no_ema  `configs/cifar.py:resnet20_modern_no_ema`, the same without the EMA.
  torch_reference    benchmarks/peers/torch_reference.py with its defaults (per-channel statistics of the split,
                     BN over 128, normalise then zero-pad, batches straddling epochs).
  torch_pad_black    the reference padding the raw image with black (torchvision's RandomCrop before Normalize).
  torch_short_batch  the reference with a DataLoader's short last batch of each epoch.
  torch_constants    the reference with the CIFAR-10 constants many torch scripts copy instead of the split's.
Each run is a workdir OUT/<variant>_<steps>/seed_<k> with metrics.jsonl (resnet_jax's format for both), so
`python -m resnet_jax.plot OUT/jax_cifar_row_540 OUT/torch_reference_540` draws the curves side by side.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(REPO, 'benchmarks', 'peers', 'torch_reference.py')

_JAX_COMMON = ['--config.model.dtype=float32', '--config.schedule.warmup=none', '--config.log_every_steps=20',
               '--config.keep_checkpoints=1', '--config.steps_per_dispatch=20']
VARIANTS = {
    'jax_cifar_row': ('jax', []),
    'jax_per_channel': ('jax', ['--config.augment.normalization=per_channel']),
    'jax_reference_conv': ('jax', ['--config.augment.normalization=per_channel', '--config.batch_norm.mode=global']),
    # timm's EMA default (0.9998) with its warm-up ramp (issue 23): each run reports the weights (test_accuracy,
    # the same run as jax_cifar_row: the average does not change training) and their average (ema_test_accuracy).
    'jax_cifar_row_ema': ('jax', ['--config.ema.decay=0.9998', '--config.ema.warmup=True']),
    # The modern CIFAR row (configs/cifar.py:resnet20_modern: cosine, label smoothing 0.1, mixup/CutMix,
    # TrivialAugmentWide on the host, EMA 0.9998 with warm-up; issue 24 item 6) and the row without the EMA.
    'jax_modern': ('jax', []),
    'jax_modern_no_ema': ('jax', []),
    'torch_reference': ('torch', []),
    'torch_pad_black': ('torch', ['--pad', 'black']),
    'torch_short_batch': ('torch', ['--epoch_end', 'short']),
    'torch_constants': ('torch', ['--stats', 'constants']),
}

# The configs/cifar.py row each jax variant starts from (the paper row unless named here).
ROW_OF_VARIANT = {'jax_modern': 'resnet20_modern', 'jax_modern_no_ema': 'resnet20_modern_no_ema'}


def write_split(data: str, out: str, test_examples: int, seed: int = 22) -> str:
  directory = os.path.join(out, 'data')
  if os.path.exists(os.path.join(directory, 'test.npz')):
    return directory
  os.makedirs(directory, exist_ok=True)
  with np.load(data) as arrays:
    images, labels = arrays['images'], arrays['labels'].astype(np.int64)
  order = np.random.default_rng(seed).permutation(len(labels))
  train, test = order[:-test_examples], order[-test_examples:]
  np.savez(os.path.join(directory, 'train.npz'), images=images[train], labels=labels[train])
  np.savez(os.path.join(directory, 'test.npz'), images=images[test], labels=labels[test])
  return directory


def command(variant: str, steps: int, seed: int, workdir: str, data_dir: str) -> list[str]:
  kind, extra = VARIANTS[variant]
  half, three_quarters = steps // 2, steps * 3 // 4
  evaluate = max(steps // 4, 1)
  if kind == 'jax':
    row = ROW_OF_VARIANT.get(variant, 'resnet20')
    return [sys.executable, '-m', 'resnet_jax.main', '--config', f'configs/cifar.py:{row}', '--workdir', workdir,
            f'--config.dataset.name=npz:{data_dir}', f'--config.seed={seed}', f'--config.total_steps={steps}',
            f'--config.schedule.boundaries_steps=({half},{three_quarters})', f'--config.eval_every_steps={evaluate}',
            f'--config.checkpoint_every_steps={steps}'] + _JAX_COMMON + extra
  return [sys.executable, REFERENCE, '--train', os.path.join(data_dir, 'train.npz'), '--test',
          os.path.join(data_dir, 'test.npz'), '--workdir', workdir, '--seed', str(seed), '--steps', str(steps),
          '--eval_every', str(evaluate), '--log_every', '20'] + extra


def read_run(workdir: str) -> dict:
  lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  tests = [line for line in lines if 'test_accuracy' in line]
  train = [line for line in lines if 'train_loss' in line]
  averaged = {name: tests[-1][name] for name in ('ema_test_accuracy', 'ema_test_loss') if name in tests[-1]}
  return {'test_accuracy': tests[-1]['test_accuracy'], 'test_loss': tests[-1]['test_loss'], **averaged,
          'final_train_loss': train[-1]['train_loss'],
          'train_loss_by_step': {str(line['step']): line['train_loss'] for line in train},
          'test_accuracy_by_step': {str(line['step']): line['test_accuracy'] for line in tests}}


def run_one(job) -> dict:
  variant, steps, seed, workdir, data_dir = job
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  started = time.perf_counter()
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION='highest')  # float32 convolutions on GPUs too (no TF32)
  done = subprocess.run(command(variant, steps, seed, workdir, data_dir), cwd=REPO, capture_output=True, text=True,
                        env=env)
  seconds = time.perf_counter() - started
  if done.returncode != 0:
    return {'variant': variant, 'steps': steps, 'seed': seed, 'error': (done.stdout + done.stderr)[-3000:]}
  return {'variant': variant, 'steps': steps, 'seed': seed, 'seconds': seconds, **read_run(workdir)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', default='540,2000')
  parser.add_argument('--variants', default='jax_cifar_row,jax_per_channel,jax_reference_conv,torch_reference,'
                                            'torch_pad_black,torch_short_batch,torch_constants')
  parser.add_argument('--long_variants', default='jax_cifar_row,jax_reference_conv,torch_reference',
                      help='the variants also run at the longest --steps (the others only at the shortest)')
  parser.add_argument('--test_examples', type=int, default=500)
  parser.add_argument('--jobs', type=int, default=4)
  parser.add_argument('--json')
  args = parser.parse_args(argv)
  data_dir = write_split(args.data, args.out, args.test_examples)
  steps_list = [int(s) for s in args.steps.split(',')]
  jobs = []
  for steps in sorted(steps_list):  # seed by seed: a study cut short still has every variant's first seeds
    for seed in range(args.seeds):
      for variant in args.variants.split(','):
        if steps != min(steps_list) and variant not in args.long_variants.split(','):
          continue
        jobs.append((variant, steps, seed, os.path.join(args.out, f'{variant}_{steps}', f'seed_{seed}'), data_dir))
  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    runs = []
    for result in pool.map(run_one, jobs):
      runs.append(result)
      print(json.dumps({k: v for k, v in result.items() if not k.endswith('by_step')})[:400], flush=True)
      if args.json:  # as the runs finish: a cut-short study keeps what it has
        with open(args.json, 'w') as f:
          json.dump({'runs': runs}, f)
  table = {}
  for run in runs:
    if 'error' in run:
      continue
    row = table.setdefault(f"{run['variant']}_{run['steps']}", {'accuracies': [], 'train_losses': []})
    row['accuracies'].append(run['test_accuracy'])
    row['train_losses'].append(run['final_train_loss'])
    if 'ema_test_accuracy' in run:
      table.setdefault(f"{run['variant']}_{run['steps']}_average", {'accuracies': [], 'train_losses': []})
      table[f"{run['variant']}_{run['steps']}_average"]['accuracies'].append(run['ema_test_accuracy'])
      table[f"{run['variant']}_{run['steps']}_average"]['train_losses'].append(run['final_train_loss'])
  for name, row in table.items():
    accuracies = row['accuracies']
    row.update(mean=statistics.mean(accuracies), std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
               train_loss_mean=statistics.mean(row['train_losses']))
    print(f"{name:28s} test accuracy {100 * row['mean']:.1f} +- {100 * row['std']:.1f} % over {len(accuracies)} "
          f"seeds ({', '.join(f'{100 * a:.1f}' for a in accuracies)}); final train loss {row['train_loss_mean']:.3f}")
  result = {'split': {'data': os.path.basename(args.data), 'permutation_seed': 22,
                      'test_examples': args.test_examples},
            'wall_seconds': time.perf_counter() - started, 'table': table, 'runs': runs}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
