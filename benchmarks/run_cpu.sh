#!/usr/bin/env bash
# CPU benchmark suite (project issue #6): the before/after measurements behind each CPU optimisation and the
# CPU targets, every comparison interleaved in one invocation (shared machines: only ratios are meaningful).
# Writes benchmarks/results/cpu_<name>.jsonl (JSON Lines) and cpu_run.log. ~20 min on 2 cores.
#
#   bash benchmarks/run_cpu.sh
#   ONLY="dispatch preact1001" bash benchmarks/run_cpu.sh
#
# The peers comparison needs `pip install dm-haiku` (never a dependency of resnet_jax).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
OUT=benchmarks/results
mkdir -p "$OUT"
LOG="$OUT/cpu_run.log"
ONLY=${ONLY:-"peers dispatch donation preact1001 cache flags input bn resnext"}
PATCHED="RUNNER=benchmarks/experiments/patched_benchmark.py"

want() { [[ " $ONLY " == *" $1 "* ]]; }
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG" | grep -vE '^\{' || true; }

if want peers; then
  # ResNet-50 train step, batch 8 at 224, float32: resnet_jax vs the same without models/conv.py vs haiku.
  run "$PY" benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+lax_conv,haiku \
      --batch_size 8 --image_size 224 --rounds 4 --steps 2 --json "$OUT/cpu_peers_resnet50.jsonl"
fi
if want dispatch; then
  # CIFAR ResNet-20, batch 128, device-resident input: 1 vs 8 steps per dispatch (lax.scan over steps), with
  # and without models/conv.py (XLA:CPU's backward convolutions inside a loop).
  run "$PY" benchmarks/compare.py --rounds 2 --json "$OUT/cpu_cifar_resnet20_dispatch.jsonl" \
      --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 16 --warmup 8" \
      --variant "k1::--config.steps_per_dispatch=1" \
      --variant "k8::--config.steps_per_dispatch=8" \
      --variant "k1_lax_conv:$PATCHED PATCHES=lax_conv:--config.steps_per_dispatch=1"
  # Plain lax convolutions inside the steps scan fall off XLA:CPU's fast path: one dispatch of 8 steps only.
  run timeout 900 env PATCHES=lax_conv "$PY" benchmarks/experiments/patched_benchmark.py --config configs/default.py \
      --config.model.name=cifar_resnet20 --synthetic --config.steps_per_dispatch=8 --steps 8 --warmup 0 \
      --no_pipelined --tag k8_lax_conv --json "$OUT/cpu_cifar_resnet20_dispatch.jsonl"
fi
if want donation; then
  run "$PY" benchmarks/compare.py --rounds 2 --json "$OUT/cpu_cifar_resnet20_donation.jsonl" \
      --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 16 --warmup 8 --config.steps_per_dispatch=8" \
      --variant "donated::" \
      --variant "no_donate:$PATCHED PATCHES=no_donate:"
fi
if want preact1001; then
  # Pre-activation ResNet-1001 (issue target: compile <= 60 s on 2 cores with scanned units), batch 16.
  run "$PY" benchmarks/compare.py --rounds 1 --json "$OUT/cpu_cifar_preact_resnet1001.jsonl" \
      --common "--config configs/cifar.py:preact_resnet1001 --synthetic --batch_size 16 --steps 2 --warmup 1 --no_pipelined --config.model.scan_units=True --config.batch_norm.group_size=16" \
      --variant "scan::" \
      --variant "scan_remat::--config.model.remat=True"
fi
if want cache; then
  # Compile time with a cold, then a warm persistent compilation cache (config.compilation_cache_dir in training).
  COLD=$(mktemp -d)
  for ROUND in cold warm; do
    run "$PY" -m resnet_jax.benchmark --config configs/cifar.py:preact_resnet1001 --synthetic --batch_size 16 \
        --config.batch_norm.group_size=16 --config.model.scan_units=True --steps 1 --warmup 0 --no_pipelined \
        --compilation_cache "$COLD" --tag "cache_$ROUND" --json "$OUT/cpu_compile_cache.jsonl"
  done
  rm -rf "$COLD"
fi
if want flags; then
  # XLA:CPU flags that might help (none did at jax 0.10.2: all within +1.5..+5.6% step time; none is set).
  run "$PY" benchmarks/compare.py --rounds 1 --json "$OUT/cpu_xla_flags.jsonl" \
      --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 8 --warmup 4 --no_pipelined" \
      --variant "base::" --variant "onednn:XLA_FLAGS=--xla_cpu_use_onednn=true:" \
      --variant "conc_sched:XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true:" \
      --variant "xnnpack:XLA_FLAGS=--xla_cpu_use_xnnpack=true:"
fi
if want input; then
  # Input pipelines alone: device-resident CIFAR augmentation; Grain ImageNet (synthetic JPEGs) per worker count.
  run "$PY" -m resnet_jax.benchmark --config configs/default.py --input_only --steps 200 --json "$OUT/cpu_input.jsonl"
  run "$PY" -m resnet_jax.benchmark --config configs/imagenet.py --input_only --batch_size 64 --steps 8 \
      --workers 0,1,2 --json "$OUT/cpu_input.jsonl"
fi
if want bn; then
  # BatchNorm: layers.batch_norm_train (one-pass statistics, written-out gradient, fused ReLU) vs the
  # implementation before it (plain two-pass BatchNorm differentiated by JAX) and vs two-pass statistics. Step
  # time, peak memory and XLA's bytes-accessed estimate.
  run "$PY" benchmarks/compare.py --rounds 2 --json "$OUT/cpu_batchnorm.jsonl" \
      --common "--config configs/default.py --config.model.name=cifar_resnet20 --synthetic --steps 8 --warmup 4 --no_pipelined" \
      --variant "now::" \
      --variant "before:$PATCHED PATCHES=autodiff_bn:" \
      --variant "two_pass_bn:$PATCHED PATCHES=two_pass_bn:"
  run "$PY" benchmarks/compare.py --rounds 1 --json "$OUT/cpu_batchnorm.jsonl" \
      --common "--config configs/cifar.py:preact_resnet1001 --synthetic --batch_size 16 --steps 2 --warmup 1 --no_pipelined --config.model.scan_units=True --config.batch_norm.group_size=16" \
      --variant "preact1001_now::" \
      --variant "preact1001_before:$PATCHED PATCHES=autodiff_bn:"
  run "$PY" benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+autodiff_bn \
      --batch_size 8 --image_size 224 --rounds 3 --steps 2 --json "$OUT/cpu_batchnorm_resnet50.jsonl"
fi
if want resnext; then
  # ResNeXt-50 (32x4d) train step, batch 4 at 224: grouped convolutions through models/conv.py's canonical
  # backward pass vs through plain lax (the form before), unrolled and with scanned units.
  for SCAN in False True; do
    run "$PY" benchmarks/compare.py --rounds 1 --json "$OUT/cpu_resnext50_grouped_conv.jsonl" \
        --common "--config configs/imagenet.py:resnext50_32x4d --synthetic --batch_size 4 --steps 2 --warmup 1 --no_pipelined --config.batch_norm.group_size=4 --config.model.scan_units=$SCAN" \
        --variant "scan_$SCAN::" \
        --variant "scan_${SCAN}_lax_grouped_conv:$PATCHED PATCHES=lax_grouped_conv:"
  done
fi
echo "results in $OUT/cpu_*.jsonl; log $LOG"
