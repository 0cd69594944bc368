r"""The same ResNet-50 training workload in peer implementations, run back to back in one process.

  python benchmarks/peers.py --batch_size 8 --image_size 224 --rounds 5 --steps 3 \
      --json benchmarks/results/peers_cpu.jsonl

Workload (identical for every implementation): a ResNet-50 (v1.5: stride on the 3x3, 25.6M parameters, 1000
classes) trained on one fixed synthetic batch of uint8 images already on the device, cast to float and normalised
inside the step; compute dtype float32 or bfloat16 (parameters, BatchNorm statistics, logits and loss float32);
softmax cross-entropy; SGD momentum 0.9 with coupled L2 weight decay 1e-4 (added to the gradient, as Caffe/Torch);
the step jitted (or torch.compiled) with the training state donated; the loss and the accuracy count computed in
the step and left on the device.

  resnet_jax   resnet_jax.train's own step (`make_runner` on a fed batch: what the train loop runs for streamed data) on `create_model('resnet50')` built from configs/default.py.
  haiku        dm-haiku `hk.nets.ResNet50` (the JAX peer; runs anywhere: `pip install dm-haiku`), optax SGD with
               the same chain, bf16 through haiku's jmp mixed-precision policy (BatchNorm kept float32, as haiku's
               ImageNet example does).
  torchvision  `torchvision.models.resnet50` on CUDA only: channels_last, bf16 autocast, torch.compile, SGD
               (fused where available). Skipped with a message when torch or CUDA is missing.

CIFAR (`--workload cifar`, issue 27): the 6n+2 CIFAR ResNets of He et al. 2015 §4.2 (`--models`, default
ResNet-20/56/110; option-A shortcuts; batch 128 with `--batch_size 128`; 32x32 uint8 images, 10 classes, the same
optimiser) against PyTorch on the CPU, eager and torch.compile, with `--torch_threads` threads:

  python benchmarks/peers.py --workload cifar --batch_size 128 --rounds 4 --steps 3 \
      --json benchmarks/results/cpu_peers_cifar.jsonl

  torch_eager / torch_compile  benchmarks/experiments/torch_cifar_worker.py in a subprocess of $TORCH_PYTHON
               (default /work/torchvenv/bin/python: torch lives in its own environment, without jax), driven one
               step at a time over a pipe so its steps interleave with resnet_jax's like the in-process peers.

The implementations alternate over `--rounds` rounds (order reversed every round), each round timing `--steps`
steps one by one (block_until_ready / cuda.synchronize around each); the report is the median step time per
implementation over all rounds and the ratio resnet_jax / peer (< 1: resnet_jax is faster). One JSON object per
invocation is appended to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LEARNING_RATE = 0.1
NUM_CLASSES = 1000
# ImageNet statistics (every implementation normalises the same way).
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Skip(Exception):
  """An implementation that cannot run here (missing package or device); the message says why."""


def _resolve_dtype(name: str) -> str:
  if name == 'auto':
    return 'bfloat16' if jax.default_backend() in ('gpu', 'cuda', 'rocm', 'tpu') else 'float32'
  if name not in ('float32', 'bfloat16'):
    raise SystemExit(f'error: --dtype {name!r}: choose auto, float32 or bfloat16')
  return name


def synthetic_batch(batch_size: int, image_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
          'label': rng.integers(0, NUM_CLASSES, (batch_size,), dtype=np.int32)}


# ----------------------------------------------------------------------------------------------------------
# Implementations: each returns (step_fn() -> None that runs and waits for one step, compile seconds, info).


def make_resnet_jax(batch: dict[str, np.ndarray], dtype: str, model_name: str = 'resnet50',
                    overrides: Optional[list[tuple[str, str]]] = None, dataset: str = 'imagenet2012',
                    num_classes: int = NUM_CLASSES, mean=MEAN, std=STD):
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  from resnet_jax import classifier  # pylint: disable=g-import-not-at-top
  from resnet_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import optim  # pylint: disable=g-import-not-at-top
  from resnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from resnet_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import augment  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import streaming  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  settings = [('model.name', model_name), ('model.dtype', dtype), ('dataset.name', dataset),
              ('batch_size', str(len(batch['label']))), ('schedule.name', 'constant'),
              ('schedule.warmup', 'none'), ('schedule.base_lr', str(LEARNING_RATE)),
              ('optimizer.momentum', str(MOMENTUM)), ('optimizer.weight_decay', str(WEIGHT_DECAY)),
              ('optimizer.weight_decay_on', 'all')] + list(overrides or [])
  config = config_lib.build_config(os.path.join(root, 'configs', 'default.py'), settings)
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = classifier.model_from_config(config, num_classes, mean, std)
  tx = optim.make_optimizer(config, optim.make_schedule(config, 1000.0, int(config.total_steps)))

  # The train loop's own step for a fed batch (no device operation: only the cast, as the peers get the batch).
  run = train.make_runner(model, tx, augment.SmallImageAugment(crop_padding=0, flip=False), config, mesh,
                          streaming.StreamingTrainData.batch_in_program)
  state = state_lib.init_train_state(model, tx, tuple(batch['image'].shape[1:]), 0, mesh)
  acc = jax.device_put(train.zero_accumulator(), parallel.replicated(mesh))
  device_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  started = time.perf_counter()
  compiled = run.lower(state, acc, device_batch, 1).compile()
  compile_s = time.perf_counter() - started
  flops = benchmark._cost(compiled, 'flops')  # pylint: disable=protected-access
  carry = [state, acc]

  def step():
    carry[0], carry[1] = compiled(carry[0], carry[1], device_batch)
    jax.block_until_ready(carry)

  def loss():
    summary = parallel.fetch(carry[1])
    return float(summary['loss'] / max(summary['examples'], 1))

  return step, compile_s, {'xla_flops_per_step': flops, 'loss': loss,
                           'params': int(sum(x.size for x in jax.tree.leaves(state.params)))}


def make_haiku(batch: dict[str, np.ndarray], dtype: str):
  try:
    import haiku as hk  # pylint: disable=g-import-not-at-top
    import jmp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise Skip(f'dm-haiku is not installed ({e}); pip install dm-haiku') from None

  if dtype == 'bfloat16':
    hk.mixed_precision.set_policy(hk.nets.ResNet50, jmp.get_policy('params=float32,compute=bfloat16,output=float32'))
    hk.mixed_precision.set_policy(hk.BatchNorm, jmp.get_policy('params=float32,compute=float32,output=bfloat16'))
  else:
    hk.mixed_precision.clear_policy(hk.nets.ResNet50)
    hk.mixed_precision.clear_policy(hk.BatchNorm)

  def forward(images, is_training):
    x = (images.astype(jnp.float32) - jnp.asarray(MEAN)) / jnp.asarray(STD)
    return hk.nets.ResNet50(NUM_CLASSES)(x, is_training=is_training)

  net = hk.transform_with_state(forward)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
  device_batch = jax.device_put(batch, jax.devices()[0])
  params, net_state = net.init(jax.random.key(0), device_batch['image'], is_training=True)
  opt_state = tx.init(params)

  def train_step(carry, batch):
    params, net_state, opt_state, totals = carry

    def loss_fn(params):
      logits, new_state = net.apply(params, net_state, None, batch['image'], is_training=True)
      logits = logits.astype(jnp.float32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, (logits, new_state)

    (loss, (logits, net_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    n = jnp.float32(batch['label'].shape[0])
    totals = {'loss': totals['loss'] + loss * n, 'correct': totals['correct'] + correct,
              'examples': totals['examples'] + n}
    return params, net_state, opt_state, totals

  totals = {k: jnp.float32(0) for k in ('loss', 'correct', 'examples')}
  jitted = jax.jit(train_step, donate_argnums=(0,))
  carry = [(params, net_state, opt_state, totals)]
  started = time.perf_counter()
  compiled = jitted.lower(carry[0], device_batch).compile()
  compile_s = time.perf_counter() - started
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  def step():
    carry[0] = compiled(carry[0], device_batch)
    jax.block_until_ready(carry[0])

  def loss():
    t = carry[0][3]
    return float(t['loss'] / max(float(t['examples']), 1))

  return step, compile_s, {'xla_flops_per_step': float(cost['flops']) if cost else None, 'loss': loss,
                           'params': int(sum(x.size for x in jax.tree.leaves(params)))}


def make_torchvision(batch: dict[str, np.ndarray], dtype: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise Skip(f'torch/torchvision not installed ({e}); on a CUDA machine: pip install torch torchvision') from None
  if not torch.cuda.is_available():
    raise Skip('torchvision peer needs CUDA (torch.cuda.is_available() is False); skipped on this machine')
  device = torch.device('cuda')
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  model = torchvision.models.resnet50(num_classes=NUM_CLASSES).to(device).to(memory_format=torch.channels_last)
  try:
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          fused=True)
  except (TypeError, RuntimeError):
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  images = torch.from_numpy(batch['image']).to(device)           # uint8 NHWC, like the JAX peers
  labels = torch.from_numpy(batch['label']).long().to(device)
  mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
  totals = torch.zeros(3, device=device)
  autocast = dtype == 'bfloat16'

  def train_step(images, labels):
    x = images.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
    x = (x - mean) / std
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
      logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      correct = (logits.argmax(-1) == labels).sum()
      totals.add_(torch.stack([loss.detach() * labels.numel(), correct.float(),
                               torch.tensor(float(labels.numel()), device=device)]))

  compiled_step = torch.compile(train_step)
  started = time.perf_counter()
  for _ in range(3):  # torch.compile compiles lazily (forward, backward, optimizer) over the first calls
    compiled_step(images, labels)
  torch.cuda.synchronize()
  compile_s = time.perf_counter() - started

  def step():
    compiled_step(images, labels)
    torch.cuda.synchronize()

  def loss():
    t = totals.cpu().numpy()
    return float(t[0] / max(t[2], 1))

  return step, compile_s, {'xla_flops_per_step': None, 'loss': loss, 'torch_version': torch.__version__,
                           'params': int(sum(p.numel() for p in model.parameters()))}


# CIFAR workload (--workload cifar): He et al. 2015 §4.2's 6n+2 nets, option-A shortcuts, 32x32 images, 10 classes.
CIFAR_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)
TORCH_PYTHON = os.environ.get('TORCH_PYTHON', '/work/torchvenv/bin/python')
TORCH_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'experiments', 'torch_cifar_worker.py')


class TorchWorker:
  """PyTorch in its own process (benchmarks/experiments/torch_cifar_worker.py under $TORCH_PYTHON, an environment
  with torch; the two need not share one), driven one command at a time, so its steps interleave with
  resnet_jax's in one run. While one side runs, the other waits on a pipe."""

  def __init__(self, threads: int):
    import subprocess  # pylint: disable=g-import-not-at-top
    if not os.path.exists(TORCH_PYTHON):
      raise Skip(f'no torch Python at {TORCH_PYTHON} (set TORCH_PYTHON)')
    self.threads = threads
    self.process = subprocess.Popen([TORCH_PYTHON, TORCH_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env={**os.environ, 'OMP_NUM_THREADS': str(threads)})

  def ask(self, **request) -> dict[str, Any]:
    self.process.stdin.write(json.dumps(request) + '\n')
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise SystemExit(f'error: the torch worker exited ({self.process.wait()}) on {request}')
    return json.loads(line)

  def make(self, name: str, depth: int, compile_model: bool, batch_path: str):
    reply = self.ask(cmd='build', name=name, depth=depth, compile=compile_model, batch=batch_path,
                     mean=CIFAR_MEAN, std=CIFAR_STD, threads=self.threads)

    def step():
      self.ask(cmd='steps', name=name, n=1)

    def loss():
      return self.ask(cmd='loss', name=name)['loss']

    return step, reply['compile_s'], {'xla_flops_per_step': None, 'loss': loss, 'params': reply['params'],
                                      'torch_version': reply['torch_version'], 'torch_threads': reply['threads']}

  def close(self):
    self.process.stdin.write(json.dumps({'cmd': 'quit'}) + '\n')
    self.process.stdin.close()
    self.process.wait()


def make_cifar_peers(models: list[str], impls: list[str], batch: dict[str, np.ndarray], dtype: str,
                     torch_threads: int):
  """{f'{impl}:{model}': (step, compile_s, info)} for resnet_jax, torch_eager and torch_compile on each model."""
  import tempfile  # pylint: disable=g-import-not-at-top
  made, skipped, worker = {}, {}, None
  batch_path = os.path.join(tempfile.mkdtemp(), 'batch.npz')
  np.savez(batch_path, **batch)  # the torch worker trains on the very same bytes
  for model_name in models:
    depth = int(model_name.rsplit('resnet', 1)[1])
    for impl in impls:
      name = f'{impl}:{model_name}'
      if impl.startswith('resnet_jax'):  # resnet_jax+PATCH: experiments/peers_patched.py registers those
        made[name] = IMPLEMENTATIONS[impl](batch, dtype, model_name=model_name, dataset='cifar10', num_classes=10,
                                           mean=CIFAR_MEAN, std=CIFAR_STD)
      elif impl in ('torch_eager', 'torch_compile'):
        try:
          worker = worker or TorchWorker(torch_threads)
          made[name] = worker.make(name, depth, impl == 'torch_compile', batch_path)
        except Skip as e:
          skipped[name] = str(e)
          continue
      else:
        raise SystemExit(f'error: unknown CIFAR implementation {impl!r}; choose from resnet_jax, torch_eager, '
                         'torch_compile')
      print(f'  {name}: compiled in {made[name][1]:.1f}s', flush=True)
  return made, skipped, worker


IMPLEMENTATIONS: dict[str, Callable] = {'resnet_jax': make_resnet_jax, 'haiku': make_haiku,
                                        'torchvision': make_torchvision}


# ----------------------------------------------------------------------------------------------------------


def alternate(steps_of: dict[str, Callable[[], None]], rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
  """Per-step seconds of each implementation, interleaved: round r runs every implementation `steps` times, in
  the listed order on even rounds and reversed on odd ones."""
  names = list(steps_of)
  for name in names:
    for _ in range(warmup):
      steps_of[name]()
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      for _ in range(steps):
        t0 = time.perf_counter()
        steps_of[name]()
        times[name].append(time.perf_counter() - t0)
  return times


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--image_size', type=int, default=224)
  p.add_argument('--dtype', default='auto', help='auto (bf16 on GPU/TPU, f32 on CPU), float32, bfloat16')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--steps', type=int, default=3, help='timed steps per implementation per round')
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--impls', default='resnet_jax,haiku,torchvision')
  p.add_argument('--json', default=None, help='append one JSON line with the results')
  p.add_argument('--tag', default=None)
  p.add_argument('--workload', default='resnet50', choices=('resnet50', 'cifar'),
                 help='cifar: the 6n+2 CIFAR nets of --models (32x32, 10 classes) against PyTorch eager and '
                      'torch.compile on the CPU (--impls resnet_jax,torch_eager,torch_compile)')
  p.add_argument('--models', default='cifar_resnet20,cifar_resnet56,cifar_resnet110', help='with --workload cifar')
  p.add_argument('--torch_threads', type=int, default=2, help='with --workload cifar: torch.set_num_threads')
  args = p.parse_args(argv)
  dtype = _resolve_dtype(args.dtype)
  if args.workload == 'cifar':
    return main_cifar(args, dtype, argv)
  batch = synthetic_batch(args.batch_size, args.image_size)
  print(f'ResNet-50 train step, batch {args.batch_size}, {args.image_size}x{args.image_size}, {dtype}, '
        f'device {jax.devices()[0].device_kind} ({jax.default_backend()}), {args.rounds} rounds x {args.steps} '
        'steps, alternating', flush=True)

  steps_of, compile_s, info, skipped = {}, {}, {}, {}
  for name in [n.strip() for n in args.impls.split(',') if n.strip()]:
    if name not in IMPLEMENTATIONS:
      raise SystemExit(f'error: unknown implementation {name!r}; choose from {", ".join(IMPLEMENTATIONS)}')
    try:
      steps_of[name], compile_s[name], info[name] = IMPLEMENTATIONS[name](batch, dtype)
      print(f'  {name}: compiled in {compile_s[name]:.1f}s', flush=True)
    except Skip as e:
      skipped[name] = str(e)
      print(f'  {name}: SKIPPED: {e}', flush=True)

  times = alternate(steps_of, args.rounds, args.steps, args.warmup)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  results = {}
  for name, t in times.items():
    results[name] = {'step_ms_median': 1e3 * medians[name], 'step_ms_p10': 1e3 * float(np.percentile(t, 10)),
                     'step_ms_p90': 1e3 * float(np.percentile(t, 90)),
                     'images_per_sec': args.batch_size / medians[name], 'compile_s': compile_s[name],
                     'final_mean_loss': info[name]['loss'](), 'params': info[name]['params'],
                     'xla_flops_per_step': info[name].get('xla_flops_per_step'), 'timed_steps': len(t)}
  ratios = {}
  for ours in [n for n in medians if n.startswith('resnet_jax')]:
    for name in medians:
      if name != ours:
        ratios[f'{ours}/{name}'] = medians[ours] / medians[name]
  print(f'{"implementation":<14}{"step ms (median)":>18}{"p10":>10}{"p90":>10}{"img/s":>10}{"compile s":>11}')
  for name, r in results.items():
    print(f'{name:<14}{r["step_ms_median"]:>18.1f}{r["step_ms_p10"]:>10.1f}{r["step_ms_p90"]:>10.1f}'
          f'{r["images_per_sec"]:>10.2f}{r["compile_s"]:>11.1f}')
  for key, value in ratios.items():
    first, second = key.split('/')
    print(f'ratio {key} step time: {value:.3f}  ({first if value < 1 else second} faster)')
  for name, why in skipped.items():
    print(f'skipped {name}: {why}')

  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  record = {'workload': 'resnet50_train_step', 'batch_size': args.batch_size, 'image_size': args.image_size,
            'dtype': dtype, 'rounds': args.rounds, 'steps_per_round': args.steps, 'results': results,
            'ratios_step_time': ratios, 'skipped': skipped, 'argv': list(sys.argv[1:] if argv is None else argv),
            'haiku_version': _version('haiku'), 'optax_version': optax.__version__,
            **benchmark.environment()}
  return _write_record(args, record)


def main_cifar(args, dtype: str, argv) -> dict[str, Any]:
  """--workload cifar: every (implementation, model) pair in one interleaved run; ratios per model."""
  impls = [n.strip() for n in args.impls.split(',') if n.strip()]
  if impls == ['resnet_jax', 'haiku', 'torchvision']:  # the ResNet-50 default
    impls = ['resnet_jax', 'torch_eager', 'torch_compile']
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8),
           'label': rng.integers(0, 10, (args.batch_size,), dtype=np.int32)}
  print(f'CIFAR train step, batch {args.batch_size}, 32x32, {dtype}, device {jax.devices()[0].device_kind} '
        f'({jax.default_backend()}), torch threads {args.torch_threads}, {args.rounds} rounds x {args.steps} steps, '
        'alternating', flush=True)
  made, skipped, worker = make_cifar_peers(models, impls, batch, dtype, args.torch_threads)
  times = alternate({name: m[0] for name, m in made.items()}, args.rounds, args.steps, args.warmup)
  results, ratios = {}, {}
  for name, t in times.items():
    median = float(np.median(t))
    info = made[name][2]
    results[name] = {'step_ms_median': 1e3 * median, 'step_ms_p10': 1e3 * float(np.percentile(t, 10)),
                     'step_ms_p90': 1e3 * float(np.percentile(t, 90)), 'images_per_sec': args.batch_size / median,
                     'compile_s': made[name][1], 'final_mean_loss': info['loss'](), 'params': info['params'],
                     'xla_flops_per_step': info.get('xla_flops_per_step'), 'timed_steps': len(t)}
    for key in ('torch_version', 'torch_threads'):
      if key in info:
        results[name][key] = info[key]
  for model_name in models:
    for ours_impl in [i for i in impls if i.startswith('resnet_jax')]:
      ours = f'{ours_impl}:{model_name}'
      for impl in impls:
        peer = f'{impl}:{model_name}'
        if peer != ours and ours in results and peer in results:
          ratios[f'{ours}/{peer}'] = results[ours]['step_ms_median'] / results[peer]['step_ms_median']
  if worker:
    worker.close()
  print(f'{"implementation":<32}{"step ms (median)":>18}{"p10":>10}{"p90":>10}{"img/s":>10}{"compile s":>11}')
  for name, r in results.items():
    print(f'{name:<32}{r["step_ms_median"]:>18.1f}{r["step_ms_p10"]:>10.1f}{r["step_ms_p90"]:>10.1f}'
          f'{r["images_per_sec"]:>10.1f}{r["compile_s"]:>11.1f}')
  for key, value in ratios.items():
    print(f'ratio {key} step time: {value:.3f}')
  for name, why in skipped.items():
    print(f'skipped {name}: {why}')

  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  record = {'workload': 'cifar_train_step', 'models': models, 'batch_size': args.batch_size, 'image_size': 32,
            'dtype': dtype, 'rounds': args.rounds, 'steps_per_round': args.steps, 'results': results,
            'ratios_step_time': ratios, 'skipped': skipped, 'argv': list(sys.argv[1:] if argv is None else argv),
            'optax_version': optax.__version__, **benchmark.environment()}
  return _write_record(args, record)


def _write_record(args, record: dict[str, Any]) -> dict[str, Any]:
  """`record` with --tag, appended as one JSON line to --json (when given)."""
  if args.tag:
    record['tag'] = args.tag
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'a') as f:
      f.write(json.dumps(record, sort_keys=True, default=str) + '\n')
  return record


def _version(module: str) -> Optional[str]:
  try:
    return __import__(module).__version__
  except Exception:  # pylint: disable=broad-except
    return None


if __name__ == '__main__':
  main()
