r"""ResNet-50 inference, resnet_jax beside torchvision, at several batch sizes, interleaved in one process.

  python benchmarks/inference.py --batch_sizes 1,256 --json benchmarks/results/inference.jsonl

Workload: logits of a ResNet-50 (v1.5, 1000 classes, random weights, BatchNorm with its running statistics) for a
batch of uint8 NHWC images already on the device, normalised inside the call; compute dtype bfloat16 on a GPU
(float32 on the CPU), logits float32.

  resnet_jax   `classifier.model_from_config` (configs/default.py, model.name=resnet50) applied with train=False
               under `jax.jit`, variables passed as arguments. BatchNorm is NOT folded into the convolutions
               (the export with folded BatchNorm is issue 26); XLA fuses the BN affine and ReLU into one pass.
  torchvision  `torchvision.models.resnet50().eval()`, channels_last, bf16 autocast, `torch.inference_mode`,
               `torch.compile` (mode 'max-autotune-no-cudagraphs' is not used: compile time); at batch 1 also
               mode='reduce-overhead' (CUDA graphs), the usual latency setting. CUDA only.

Each batch size: implementations alternate over --rounds rounds, each timing --calls calls one by one
(block_until_ready / cuda.synchronize around each); the median per call is reported (latency at batch 1,
img/s = batch / median).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def make_resnet_jax(images: np.ndarray, dtype: str):
  from resnet_jax import classifier  # pylint: disable=g-import-not-at-top
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(HERE)
  config = config_lib.build_config(os.path.join(root, 'configs', 'default.py'),
                                   [('model.name', 'resnet50'), ('model.dtype', dtype),
                                    ('dataset.name', 'imagenet2012')])
  model = classifier.model_from_config(config, peers.NUM_CLASSES, peers.MEAN, peers.STD)
  device_images = jax.device_put(images)
  variables = model.init(jax.random.key(0), device_images[:1], train=False)
  # Non-trivial running statistics (a trained network's are not 0 / 1).
  rng = np.random.default_rng(1)
  stats = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype), variables['batch_stats'])
  variables = {**variables, 'batch_stats': stats}

  @jax.jit
  def logits(variables, images):
    return model.apply(variables, images, train=False)

  started = time.perf_counter()
  compiled = logits.lower(variables, device_images).compile()
  compile_s = time.perf_counter() - started

  def call():
    jax.block_until_ready(compiled(variables, device_images))
  return call, compile_s


def make_torchvision(images: np.ndarray, dtype: str, mode: str = 'default'):
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise peers.Skip(f'torch/torchvision not installed ({e})') from None
  if not torch.cuda.is_available():
    raise peers.Skip('torchvision inference needs CUDA; skipped on this machine')
  device = torch.device('cuda')
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  model = torchvision.models.resnet50(num_classes=peers.NUM_CLASSES).to(device).eval()
  model = model.to(memory_format=torch.channels_last)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(0.5, 1.5)
        module.running_var.uniform_(0.5, 1.5)
  x_u8 = torch.from_numpy(images).to(device)
  mean = torch.tensor(peers.MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(peers.STD, device=device).view(1, 3, 1, 1)
  autocast = dtype == 'bfloat16'

  def forward(images):
    x = images.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
    x = (x - mean) / std
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
      return model(x).float()

  compiled = torch.compile(forward, mode=None if mode == 'default' else mode)
  started = time.perf_counter()
  with torch.inference_mode():
    for _ in range(3):
      compiled(x_u8)
  torch.cuda.synchronize()
  compile_s = time.perf_counter() - started

  def call():
    with torch.inference_mode():
      compiled(x_u8)
    torch.cuda.synchronize()
  return call, compile_s


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch_sizes', default='1,256')
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--dtype', default='auto')
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--calls', default='50,10', help='timed calls per round, per batch size (one value or one each)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--impls', default='resnet_jax,torchvision')
  p.add_argument('--tag', default=None)
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  dtype = peers._resolve_dtype(args.dtype)  # pylint: disable=protected-access
  sizes = [int(b) for b in args.batch_sizes.split(',')]
  calls = [int(c) for c in args.calls.split(',')]
  calls = calls * len(sizes) if len(calls) == 1 else calls
  impls = [i.strip() for i in args.impls.split(',') if i.strip()]
  print(f'ResNet-50 inference, {dtype}, device {jax.devices()[0].device_kind}, batch sizes {sizes}', flush=True)
  records = []
  for batch, count in zip(sizes, calls):
    images = peers.synthetic_batch(batch, args.image_size)['image']
    steps_of, compile_s, skipped = {}, {}, {}
    for name in impls:
      variants = [(name, {})]
      if name == 'torchvision' and batch == 1:
        variants.append(('torchvision_cudagraphs', {'mode': 'reduce-overhead'}))
      for label, kwargs in variants:
        try:
          make = make_resnet_jax if name == 'resnet_jax' else make_torchvision
          steps_of[label], compile_s[label] = make(images, dtype, **kwargs)
          print(f'  batch {batch} {label}: compiled in {compile_s[label]:.1f}s', flush=True)
        except peers.Skip as e:
          skipped[label] = str(e)
          print(f'  batch {batch} {label}: SKIPPED: {e}', flush=True)
    times = peers.alternate(steps_of, args.rounds, count, args.warmup)
    results = {}
    for label, t in times.items():
      median = float(np.median(t))
      results[label] = {'ms_median': 1e3 * median, 'ms_p10': 1e3 * float(np.percentile(t, 10)),
                        'ms_p90': 1e3 * float(np.percentile(t, 90)), 'images_per_sec': batch / median,
                        'compile_s': compile_s[label], 'timed_calls': len(t)}
    ratios = {f'resnet_jax/{label}': results['resnet_jax']['ms_median'] / r['ms_median']
              for label, r in results.items() if label != 'resnet_jax' and 'resnet_jax' in results}
    for label, r in results.items():
      print(f'inference batch {batch:>4} {label:<24} {r["ms_median"]:9.3f} ms  {r["images_per_sec"]:10.1f} img/s  '
            f'(p10 {r["ms_p10"]:.3f}, p90 {r["ms_p90"]:.3f}; compile {r["compile_s"]:.1f}s)', flush=True)
    for key, value in ratios.items():
      print(f'ratio inference batch {batch} {key} time: {value:.3f}', flush=True)
    from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
    record = {'workload': 'resnet50_inference', 'batch_size': batch, 'image_size': args.image_size,
              'dtype': dtype, 'rounds': args.rounds, 'calls_per_round': count, 'results': results,
              'ratios_time': ratios, 'skipped': skipped, 'bn_folded': False,
              'argv': list(sys.argv[1:] if argv is None else argv), **benchmark.environment()}
    if args.tag:
      record['tag'] = args.tag
    records.append(record)
    if args.json:
      os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
      with open(args.json, 'a') as f:
        f.write(json.dumps(record, sort_keys=True, default=str) + '\n')
  return records


if __name__ == '__main__':
  main()
