#!/usr/bin/env bash
# Issue 21 (one input path, one loop): the train step and the input pipelines before (BEFORE, a checkout of the
# commit before the change) and after (this checkout), interleaved in one run on one machine.
#   git worktree add /tmp/before 7c00b76 && bash benchmarks/issue21_before_after.sh /tmp/before
# Writes benchmarks/results/cpu_issue21_before_after.jsonl (each record tagged before/after/after_ema).
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=${1:?usage: issue21_before_after.sh BEFORE_CHECKOUT}
OUT=${OUT:-benchmarks/results/cpu_issue21_before_after.jsonl}
PY=${PY:-python}
PART=${PART:-all}  # all, or from_resnet50 (the ResNet-20 part done)
OLD="before:RUNNER=benchmarks/experiments/checkout_benchmark.py CHECKOUT=$BEFORE:"
# ResNet-20, batch 128 (device-resident CIFAR-shaped data); the moving average of the weights' cost beside it.
[ "$PART" = from_resnet50 ] || "$PY" benchmarks/compare.py --rounds 3 --json "$OUT" \
    --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 20 --no_pipelined" \
    --variant "$OLD" --variant "after::" --variant "after_ema::--config.ema.decay=0.9998"
# ResNet-50, batch 8, 224x224 (BatchNorm over the batch: the row's ghost groups of 32 do not divide 8).
"$PY" benchmarks/compare.py --rounds 3 --json "$OUT" \
    --common "--config configs/imagenet.py:resnet50 --synthetic --batch_size 8 --steps 2 --warmup 1 --no_pipelined --config.batch_norm.mode=global" \
    --variant "$OLD" --variant "after::"
# The input pipelines alone: device-resident CIFAR augmentation; Grain ImageNet decoding (synthetic JPEGs).
"$PY" benchmarks/compare.py --rounds 3 --json "$OUT" \
    --common "--config configs/default.py --input_only --synthetic --steps 200" --variant "$OLD" --variant "after::"
"$PY" benchmarks/compare.py --rounds 3 --json "$OUT" \
    --common "--config configs/imagenet.py:resnet50 --input_only --synthetic --batch_size 64 --steps 8 --workers 0" \
    --variant "$OLD" --variant "after::"
