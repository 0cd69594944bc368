r"""What mixup/CutMix and RandAugment/TrivialAugment cost on the CPU (issue 24, item 7): three interleaved
`benchmarks/compare.py` runs of `python -m resnet_jax.benchmark`, every record appended to one JSON Lines file (its
`tag` names the comparison and the variant).

  python benchmarks/experiments/issue24_costs.py --data OUT/data --json benchmarks/results/cpu_issue24_costs.jsonl

  1. mix:   the train step of configs/cifar.py:resnet20 (batch 128, synthetic device-resident CIFAR images) with
            mixup 1.0 + CutMix 1.0 on every batch (mix_prob 1, one of the two per batch) vs off.
  2. grain: the Grain input alone (`--input_only`: synthetic ImageNet JPEGs, decode + Inception crop 224 + flip, batch
            64, in-process threads: --workers 0, as the README's Grain input row) with RandAugment
            rand-m9-mstd0.5-inc1 / TrivialAugmentWide vs off.
  3. cifar: the real streamed CIFAR run (`--data`: a directory of train.npz/test.npz, e.g. seed_study's split),
            ResNet-20 batch 128 fed by the Grain pipeline back to back (images_per_sec_pipelined), with
            TrivialAugmentWide vs without (both streamed): whether the host augmentation keeps up with the step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARE = os.path.join(REPO, 'benchmarks', 'compare.py')


def comparisons(data: str) -> dict[str, tuple[str, list[str]]]:
  """name -> (common benchmark arguments, variants as compare.py's NAME:ENV:ARGS)."""
  return {
      'mix': ('--config configs/cifar.py:resnet20 --synthetic --steps 20',
              ['mix_off::', 'mix_on::--config.augment.mixup_alpha=1.0 --config.augment.cutmix_alpha=1.0']),
      'grain': ('--config configs/imagenet.py:resnet50 --input_only --synthetic --batch_size 64 --steps 16 '
                '--workers 0',
                ['grain_off::', 'grain_randaugment::--config.augment.auto_augment=rand-m9-mstd0.5-inc1',
                 'grain_trivialaugment::--config.augment.auto_augment=trivialaugment']),
      'cifar': (f'--config configs/cifar.py:resnet20 --config.dataset.name=npz:{data} --pipeline grain --steps 20 '
                '--config.dataset.pipeline=grain',
                ['cifar_streamed_off::', 'cifar_streamed_trivialaugment::--config.augment.auto_augment=trivialaugment']),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', required=True, help='directory with train.npz and test.npz (the CIFAR split)')
  parser.add_argument('--json', required=True)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--only', default='mix,grain,cifar')
  args = parser.parse_args(argv)
  for name, (common, variants) in comparisons(os.path.abspath(args.data)).items():
    if name not in args.only.split(','):
      continue
    print(f'== {name}', flush=True)
    command = [sys.executable, COMPARE, '--rounds', str(args.rounds), '--json', args.json, '--common', common]
    for variant in variants:
      command += ['--variant', variant]
    subprocess.run(command, cwd=REPO, check=True)


if __name__ == '__main__':
  main()
