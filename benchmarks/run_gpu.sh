#!/usr/bin/env bash
# GPU benchmark suite (project issue #6): run from the repository root on a machine with one NVIDIA GPU
# (H100/H200). Writes benchmarks/results/<gpu>_<name>.jsonl (JSON Lines; one object per run) and a log.
#
#   bash benchmarks/run_gpu.sh                 # everything (~20 min on an H100, most of it compiling)
#   ONLY="resnet50 cifar110" bash benchmarks/run_gpu.sh
#
# Needs jax[cuda12] (or cuda13) matching the installed jax, and for the peers: pip install dm-haiku, and
# pip install torch==2.14.1 torchvision==0.29.1 (CUDA build; optional, skipped with a message if missing).
# Every run uses synthetic data (no dataset needed) and bf16 compute (config.model.dtype='auto' is bfloat16 on
# GPU; float32 params, BatchNorm statistics, logits and loss). The persistent compilation cache makes re-runs
# start fast; the first run of each model reports the cold compile time.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '_' | tr -cd '[:alnum:]_-' || true)
GPU=${GPU:-gpu}
OUT=benchmarks/results
CACHE=${JAX_CACHE:-/tmp/resnet_jax_jax_cache}
mkdir -p "$OUT"
LOG="$OUT/${GPU}_run_gpu.log"
ONLY=${ONLY:-"resnet50 bn resnet50_fp32 cifar20 cifar110 preact1001 input peers cache"}
# An ImageNet config if the project has one; otherwise the CIFAR base config switched to ImageNet shapes.
if [[ -f configs/imagenet.py ]]; then
  IMAGENET=(--config configs/imagenet.py)
else
  IMAGENET=(--config configs/default.py --config.dataset.name=imagenet2012)
fi
BENCH=("$PY" -m resnet_jax.benchmark --synthetic --compilation_cache "$CACHE")

want() { [[ " $ONLY " == *" $1 "* ]]; }
run() { echo "+ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG" | grep -E '^(summary|error|ratio|implementation|resnet_jax|haiku|torchvision|skipped)' || true; }

nvidia-smi | tee -a "$LOG" || true

if want resnet50; then
  # ResNet-50, batch 256, bf16, fed batches (what the Grain pipeline delivers), 224x224, BatchNorm over the whole
  # batch (the peers' workload; the recipe's ghost BN of 32 costs about the same). --profile adds the device
  # time per XLA operation (convolutions vs BatchNorm/ReLU fusions) to the record.
  run "${BENCH[@]}" "${IMAGENET[@]}" --config.model.name=resnet50 --config.model.dtype=auto \
      --config.batch_norm.mode=global --batch_size 256 --steps 50 --warmup 10 --profile /tmp/resnet_jax_profile_r50 \
      --json "$OUT/${GPU}_resnet50_bs256_bf16.jsonl"
  # Same with remat off/on is not needed for ResNet-50 at 256 (fits easily); larger batch for throughput:
  run "${BENCH[@]}" "${IMAGENET[@]}" --config.model.name=resnet50 --config.model.dtype=auto \
      --batch_size 512 --steps 30 --warmup 10 --json "$OUT/${GPU}_resnet50_bs512_bf16.jsonl"
fi
if want bn; then
  # Before/after of layers.batch_norm_train (written-out BatchNorm gradient, one-pass statistics, fused BN-ReLU)
  # vs plain two-pass BatchNorm differentiated by JAX, with profiles; and one-pass vs two-pass statistics.
  PATCHED=("$PY" benchmarks/experiments/patched_benchmark.py --synthetic --compilation_cache "$CACHE")
  for PATCH in "" autodiff_bn; do
    run env PATCHES=$PATCH "${PATCHED[@]}" "${IMAGENET[@]}" --config.model.name=resnet50 \
        --config.batch_norm.mode=global --batch_size 256 --steps 30 --warmup 5 --profile "/tmp/resnet_jax_bn${PATCH:+_before}" \
        --tag "resnet50_bn${PATCH:+_before}" --json "$OUT/${GPU}_batchnorm.jsonl"
    run env PATCHES=$PATCH "${PATCHED[@]}" --config configs/default.py --config.steps_per_dispatch=20 --steps 100 \
        --warmup 20 --profile "/tmp/resnet_jax_bn110${PATCH:+_before}" --tag "cifar_resnet110_bn${PATCH:+_before}" \
        --json "$OUT/${GPU}_batchnorm.jsonl"
  done
  run env PATCHES=two_pass_bn "${PATCHED[@]}" "${IMAGENET[@]}" --config.model.name=resnet50 \
      --config.batch_norm.mode=global --batch_size 256 --steps 30 --warmup 5 --tag resnet50_bn_two_pass \
      --json "$OUT/${GPU}_batchnorm.jsonl"
fi
if want resnet50_fp32; then
  run "${BENCH[@]}" "${IMAGENET[@]}" --config.model.name=resnet50 --config.model.dtype=float32 \
      --batch_size 256 --steps 30 --warmup 10 --json "$OUT/${GPU}_resnet50_bs256_fp32.jsonl"
fi
if want cifar20; then
  # CIFAR ResNet-20, batch 128, device-resident data: 1 vs 50 steps per dispatch (launch-bound net).
  for K in 1 10 50; do
    run "${BENCH[@]}" --config configs/default.py --config.model.name=cifar_resnet20 \
        --config.steps_per_dispatch=$K --steps 500 --warmup 50 --json "$OUT/${GPU}_cifar_resnet20_bs128.jsonl"
  done
fi
if want cifar110; then
  # The CIFAR recipe (configs/default.py): ResNet-110, batch 128, bf16, device-resident data.
  for K in 1 20; do
    run "${BENCH[@]}" --config configs/default.py --config.steps_per_dispatch=$K --steps 200 --warmup 20 \
        --json "$OUT/${GPU}_cifar_resnet110_bs128.jsonl"
  done
  run "${BENCH[@]}" --config configs/default.py --config.model.scan_units=True --config.steps_per_dispatch=20 \
      --steps 200 --warmup 20 --json "$OUT/${GPU}_cifar_resnet110_bs128.jsonl"
fi
if want preact1001; then
  # Pre-activation ResNet-1001, batch 128: scanned units, with and without remat (memory vs time).
  run "${BENCH[@]}" --config configs/default.py --config.model.name=cifar_preact_resnet1001 \
      --config.model.scan_units=True --config.model.remat=True --steps 30 --warmup 5 \
      --json "$OUT/${GPU}_cifar_preact_resnet1001_bs128.jsonl"
  run "${BENCH[@]}" --config configs/default.py --config.model.name=cifar_preact_resnet1001 \
      --config.model.scan_units=True --config.model.remat=False --steps 30 --warmup 5 \
      --json "$OUT/${GPU}_cifar_preact_resnet1001_bs128.jsonl"
fi
if want input; then
  # Input pipelines alone: device-resident CIFAR augmentation, and Grain ImageNet decoding on this host's CPUs.
  run "${BENCH[@]}" --config configs/default.py --input_only --steps 200 --json "$OUT/${GPU}_input.jsonl"
  run "${BENCH[@]}" "${IMAGENET[@]}" --input_only --batch_size 256 --steps 16 --workers 0,4,8,15 \
      --json "$OUT/${GPU}_input.jsonl"
fi
if want peers; then
  # resnet_jax vs dm-haiku vs torchvision (channels_last + bf16 autocast + torch.compile), same workload.
  run "$PY" benchmarks/peers.py --batch_size 256 --image_size 224 --dtype bfloat16 --rounds 5 --steps 20 \
      --warmup 5 --json "$OUT/${GPU}_peers_resnet50_bs256_bf16.jsonl"
fi
if want cache; then
  # Compile time with a cold vs a warm persistent compilation cache (ResNet-50 bs 256).
  COLD=$(mktemp -d)
  for CACHE_DIR in "$COLD" "$COLD"; do
    run "$PY" -m resnet_jax.benchmark --synthetic --compilation_cache "$CACHE_DIR" "${IMAGENET[@]}" \
        --config.model.name=resnet50 --batch_size 256 --steps 5 --warmup 2 --no_pipelined \
        --json "$OUT/${GPU}_compile_cache.jsonl"
  done
  rm -rf "$COLD"
fi
echo "results in $OUT/${GPU}_*.jsonl; log $LOG"
