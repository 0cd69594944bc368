r"""CPU inference of the exported network beside PyTorch, interleaved in one run (issue 26).

  python benchmarks/export_inference.py --torch_python /work/torchvenv/bin/python \
      --json benchmarks/results/cpu_export_inference.json

Models: ResNet-50 at 224x224 (1000 classes) and the CIFAR ResNet-56 at 32x32 (10 classes), at batch 1 and 32.
Both sides compute the same function: torchvision's resnet50 (random weights, BatchNorm statistics drawn at random
so that they are not identities) is converted into resnet_jax's with `resnet_jax.convert`; the CIFAR ResNet-56
(which torchvision does not have) is resnet_jax's, copied into a plain PyTorch module (option A shortcuts, as He
et al. 2015). The logits of every implementation are compared with torch eager's on the same images.

Implementations (each in a worker process of its own; one runs at a time):
  jax_unfolded    resnet_jax `model.apply(variables, images_uint8, train=False)` under jax.jit (BN unfolded)
  jax_folded      `export.fold_batch_norm(...)` under jax.jit, parameters as arguments
  ort_ours        our export (`export.to_onnx`, BN folded, dynamic batch) in onnxruntime
  ort_torch       torch.onnx.export of the torch model (TorchScript exporter, opset 17, dynamic batch) in the
                  same onnxruntime
  torch_eager     the torch model, eval, torch.inference_mode
  torch_compile   torch.compile of it (inductor, default mode; compiled per batch size before timing)
Inputs: ours take uint8 NHWC and normalise inside; the torch models and their ONNX take normalised float32 NCHW
(what a PyTorch user feeds them): ours do the cast, normalisation and transpose inside the timed call.

Timing: every (model, batch) runs --rounds rounds; in each round the implementations, in a new random order,
time --calls calls one after another (wall clock around each synchronous call). p50 / p90 over all calls, img/s
= batch / p50. Threads: torch.set_num_threads(cores), onnxruntime's default (cores), XLA's default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = {'resnet50': dict(size=224, classes=1000), 'cifar_resnet56': dict(size=32, classes=10)}
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
CIFAR_MEAN, CIFAR_STD = (125.3, 123.0, 113.9), (63.0, 62.1, 66.7)
NORMALISATION = {'resnet50': (IMAGENET_MEAN, IMAGENET_STD), 'cifar_resnet56': (CIFAR_MEAN, CIFAR_STD)}
BACKENDS = {'jax': ('jax_unfolded', 'jax_folded'), 'ort': ('ort_ours', 'ort_torch'),
            'torch': ('torch_eager', 'torch_compile')}


def images_uint8(model: str, batch: int) -> np.ndarray:
  size = MODELS[model]['size']
  return np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def normalised_nchw(model: str, images: np.ndarray) -> np.ndarray:
  mean, std = (np.asarray(v, np.float32) for v in NORMALISATION[model])
  return np.ascontiguousarray(((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------------------------
# Workers: read one JSON command per line, answer one JSON line
# ---------------------------------------------------------------------------------------------------------------


class JaxWorker:
  """resnet_jax unfolded / folded under jit; also writes our ONNX files and the ResNet-56 weights for torch."""

  def __init__(self, tmp):
    import jax  # pylint: disable=g-import-not-at-top
    from resnet_jax import classifier, convert, export, models  # pylint: disable=g-import-not-at-top
    self.jax, self.export = jax, export
    self.fns = {}
    for name in MODELS:
      mean, std = NORMALISATION[name]
      if name == 'resnet50':
        state = dict(np.load(os.path.join(tmp, 'resnet50_torch.npz')))
        variables = convert.from_torch_state_dict(state, 'resnet50')
      else:
        backbone = models.create_model(name, num_classes=10)
        variables = backbone.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
        rng = np.random.default_rng(0)
        variables = jax.tree_util.tree_map_with_path(
            lambda path, v: (rng.normal(0, 0.2, v.shape) if path[-1].key == 'mean' else
                             rng.uniform(0.5, 2.0, v.shape) if path[-1].key == 'var' else np.asarray(v)
                             ).astype(np.float32), variables)
        np.savez(os.path.join(tmp, 'cifar_resnet56_ours.npz'), **{
            f'{collection}/{"/".join(k.key for k in path)}': np.asarray(v)
            for collection in ('params', 'batch_stats')
            for path, v in jax.tree_util.tree_flatten_with_path(variables[collection])[0]})
      model = classifier.Classifier(models.create_model(name, num_classes=MODELS[name]['classes']), mean=mean,
                                    std=std)
      variables = {c: {'backbone': variables[c]} for c in ('params', 'batch_stats')}
      variables = jax.device_put(variables)
      graph = export.fold_batch_norm(model, variables)
      size = MODELS[name]['size']
      with open(os.path.join(tmp, f'{name}_ours.onnx'), 'wb') as file:
        file.write(export.to_onnx(graph, (size, size, 3), None))
      unfolded = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
      folded = jax.jit(graph.apply)
      params = jax.device_put(graph.params)
      self.fns[('jax_unfolded', name)] = lambda x, f=unfolded, v=variables: f(v, x)
      self.fns[('jax_folded', name)] = lambda x, f=folded, p=params: f(p, x)
      self.graph_info = getattr(self, 'graph_info', {})
      self.graph_info[name] = {'bn_folded': len(graph.folded), 'bn_kept': len(graph.kept)}

  def inputs(self, model, batch):
    return self.jax.device_put(images_uint8(model, batch))

  def call(self, backend, model, x):
    return self.fns[(backend, model)](x).block_until_ready()


class OrtWorker:
  def __init__(self, tmp):
    import onnxruntime  # pylint: disable=g-import-not-at-top
    self.version = onnxruntime.__version__
    self.sessions = {}
    for name in MODELS:
      for backend, file in (('ort_ours', f'{name}_ours.onnx'), ('ort_torch', f'{name}_torch.onnx')):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.sessions[(backend, name)] = onnxruntime.InferenceSession(
            os.path.join(tmp, file), options, providers=['CPUExecutionProvider'])

  def inputs(self, model, batch):
    x = images_uint8(model, batch)
    return {'ort_ours': {'images': x}, 'ort_torch': {'input': normalised_nchw(model, x)}}

  def call(self, backend, model, x):
    return self.sessions[(backend, model)].run(None, x[backend])[0]


class TorchWorker:
  def __init__(self, tmp, phase):
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    self.torch, self.tmp = torch, tmp
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    self.models, self.compiled = {}, {}
    resnet50 = torchvision.models.resnet50(weights=None).eval()
    generator = torch.Generator().manual_seed(0)
    for module in resnet50.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
        module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 1.5 + 0.5)
        module.weight.data.copy_(torch.rand(module.num_features, generator=generator) * 0.5 + 0.5)
    np.savez(os.path.join(tmp, 'resnet50_torch.npz'), **{k: v.numpy() for k, v in resnet50.state_dict().items()})
    self.models['resnet50'] = resnet50
    self.export_onnx('resnet50')
    self.versions = {'torch': torch.__version__, 'torchvision': torchvision.__version__}

  def load_cifar(self):
    state = dict(np.load(os.path.join(self.tmp, 'cifar_resnet56_ours.npz')))
    self.models['cifar_resnet56'] = cifar_resnet_torch(self.torch, state, (9, 9, 9)).eval()
    self.export_onnx('cifar_resnet56')

  def export_onnx(self, name):
    size = MODELS[name]['size']
    self.torch.onnx.export(self.models[name], self.torch.zeros(1, 3, size, size),
                           os.path.join(self.tmp, f'{name}_torch.onnx'), dynamo=False, opset_version=17,
                           input_names=['input'], output_names=['logits'],
                           dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})

  def compile(self, name, batch):
    torch = self.torch
    started = time.perf_counter()
    if name not in self.compiled:
      self.compiled[name] = torch.compile(self.models[name])
    with torch.inference_mode():
      for _ in range(2):
        self.compiled[name](self.inputs(name, batch))
    return time.perf_counter() - started

  def inputs(self, model, batch):
    return self.torch.from_numpy(normalised_nchw(model, images_uint8(model, batch)))

  def call(self, backend, model, x):
    with self.torch.inference_mode():
      out = (self.models[model] if backend == 'torch_eager' else self.compiled[model])(x)
    return out.numpy()


def cifar_resnet_torch(torch, state, stage_sizes):
  """He et al. 2015's CIFAR ResNet (option A shortcuts) in PyTorch, with resnet_jax's variables `state`
  ({'params/stem_conv/kernel': HWIO, ...})."""
  nn = torch.nn

  def conv(key, stride):
    kernel = torch.from_numpy(state[f'params/{key}/kernel']).permute(3, 2, 0, 1).contiguous()
    layer = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, stride, 1, bias=False)
    layer.weight.data.copy_(kernel)
    return layer

  def bn(key):
    layer = nn.BatchNorm2d(state[f'params/{key}/scale'].shape[0], eps=1e-5)
    layer.weight.data.copy_(torch.from_numpy(state[f'params/{key}/scale']))
    layer.bias.data.copy_(torch.from_numpy(state[f'params/{key}/bias']))
    layer.running_mean.copy_(torch.from_numpy(state[f'batch_stats/{key}/mean']))
    layer.running_var.copy_(torch.from_numpy(state[f'batch_stats/{key}/var']))
    return layer

  class Unit(nn.Module):
    def __init__(self, prefix, stride, out_features):
      super().__init__()
      self.conv1, self.bn1 = conv(f'{prefix}/conv1', stride), bn(f'{prefix}/bn1')
      self.conv2, self.bn2 = conv(f'{prefix}/conv2', 1), bn(f'{prefix}/bn2')
      self.stride, self.out_features = stride, out_features

    def forward(self, x):
      y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
      h = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
      if h.shape[1] != self.out_features:
        h = nn.functional.pad(h, (0, 0, 0, 0, 0, self.out_features - h.shape[1]))
      return torch.relu(h + y)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem_conv, self.stem_bn = conv('stem_conv', 1), bn('stem_bn')
      units = []
      for stage, (n, width) in enumerate(zip(stage_sizes, (16, 32, 64)), start=1):
        for position in range(1, n + 1):
          units.append(Unit(f'stage{stage}_unit{position}', 2 if stage > 1 and position == 1 else 1, width))
      self.units = nn.Sequential(*units)
      head = state['params/head/kernel']
      self.head = nn.Linear(head.shape[0], head.shape[1])
      self.head.weight.data.copy_(torch.from_numpy(head.T.copy()))
      self.head.bias.data.copy_(torch.from_numpy(state['params/head/bias']))

    def forward(self, x):
      x = self.units(torch.relu(self.stem_bn(self.stem_conv(x))))
      return self.head(x.mean(dim=(2, 3)))

  return Net()


def worker_main(kind, tmp):
  sys.path.insert(0, ROOT)
  out = sys.stdout
  sys.stdout = sys.stderr  # library chatter must not reach the protocol
  worker, inputs = None, {}

  def reply(value):
    out.write(json.dumps(value) + '\n')
    out.flush()

  for line in sys.stdin:
    command = json.loads(line)
    op = command['op']
    if op == 'setup':
      started = time.perf_counter()
      worker = {'jax': JaxWorker, 'ort': OrtWorker, 'torch': lambda t: TorchWorker(t, 1)}[kind](tmp)
      info = {'setup_s': time.perf_counter() - started}
      info.update(getattr(worker, 'versions', {}))
      if kind == 'ort':
        info['onnxruntime'] = worker.version
      if kind == 'jax':
        import jax  # pylint: disable=g-import-not-at-top
        info.update(jax=jax.__version__, graphs=worker.graph_info)
      reply(info)
    elif op == 'load_cifar':
      worker.load_cifar()
      reply({})
    elif op == 'compile':
      reply({'compile_s': worker.compile(command['model'], command['batch'])})
    elif op == 'logits':
      key = (command['model'], command['batch'])
      if key not in inputs:
        inputs[key] = worker.inputs(*key)
      started = time.perf_counter()
      logits = worker.call(command['backend'], command['model'], inputs[key])
      reply({'logits': np.asarray(logits, np.float64).tolist(), 'first_call_s': time.perf_counter() - started})
    elif op == 'time':
      key = (command['model'], command['batch'])
      if key not in inputs:
        inputs[key] = worker.inputs(*key)
      times = []
      for _ in range(command['calls']):
        started = time.perf_counter()
        worker.call(command['backend'], command['model'], inputs[key])
        times.append(time.perf_counter() - started)
      reply({'times': times})
    elif op == 'quit':
      return


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


class Worker:
  def __init__(self, kind, python, tmp, env=None):
    self.kind = kind
    self.process = subprocess.Popen([python, os.path.abspath(__file__), '--worker', kind, '--tmp', tmp],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                    env=dict(os.environ, **(env or {})))

  def ask(self, **command):
    self.process.stdin.write(json.dumps(command) + '\n')
    self.process.stdin.flush()
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'worker {self.kind} died on {command}')
    return json.loads(line)

  def close(self):
    try:
      self.ask(op='quit')
    except (RuntimeError, BrokenPipeError, ValueError):
      pass
    self.process.wait(timeout=60)


def percentile(values, q):
  return float(np.percentile(np.asarray(values), q))


def git_commit():
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', 'resnet_jax'], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return commit + (' (resnet_jax/ modified)' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return None


def cpu_name():
  try:
    with open('/proc/cpuinfo') as file:
      for line in file:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--tmp', help=argparse.SUPPRESS)
  parser.add_argument('--torch_python', default=None, help='python of a venv with torch and torchvision')
  parser.add_argument('--torch_pythonpath', default=None, help='extra PYTHONPATH for it (the onnx package)')
  parser.add_argument('--batch_sizes', default='1,32')
  parser.add_argument('--models', default='resnet50,cifar_resnet56')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--calls', default='1:30,32:3', help='calls per round per batch size (batch:calls,...)')
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  if args.worker:
    worker_main(args.worker, args.tmp)
    return

  tmp = tempfile.mkdtemp(prefix='export_inference_')
  load_before = os.getloadavg()
  workers = {}
  info = {}
  if args.torch_python:
    env = {'PYTHONPATH': args.torch_pythonpath} if args.torch_pythonpath else {}
    workers['torch'] = Worker('torch', args.torch_python, tmp, env)
    info['torch'] = workers['torch'].ask(op='setup')
  elif not os.path.exists(os.path.join(tmp, 'resnet50_torch.npz')):
    raise SystemExit('--torch_python is needed: the ResNet-50 weights come from torchvision')
  workers['jax'] = Worker('jax', sys.executable, tmp)
  info['jax'] = workers['jax'].ask(op='setup')
  workers['torch'].ask(op='load_cifar')
  workers['ort'] = Worker('ort', sys.executable, tmp)
  info['ort'] = workers['ort'].ask(op='setup')
  print(json.dumps(info), flush=True)

  calls = {int(k): int(v) for k, v in (item.split(':') for item in args.calls.split(','))}
  results = []
  rng = random.Random(0)
  for model in args.models.split(','):
    for batch in (int(b) for b in args.batch_sizes.split(',')):
      entry = {'model': model, 'batch': batch, 'image_size': MODELS[model]['size'], 'implementations': {}}
      backends = [(kind, b) for kind in workers for b in BACKENDS[kind]]
      if 'torch' in workers:
        entry['torch_compile_s'] = workers['torch'].ask(op='compile', model=model, batch=batch)['compile_s']
      reference = None
      for kind, backend in backends:
        answer = workers[kind].ask(op='logits', backend=backend, model=model, batch=batch)
        logits = np.asarray(answer['logits'])
        if backend == 'torch_eager':
          reference = logits
        entry['implementations'][backend] = {'first_call_s': answer['first_call_s'], '_logits': logits}
      times = {backend: [] for _, backend in backends}
      for _ in range(args.rounds):
        rng.shuffle(backends)
        for kind, backend in backends:
          times[backend] += workers[kind].ask(op='time', backend=backend, model=model, batch=batch,
                                              calls=calls.get(batch, 2))['times']
      for _, backend in backends:
        record = entry['implementations'][backend]
        logits = record.pop('_logits')
        if reference is not None:
          record['max_rel_diff_vs_torch_eager'] = float(np.max(np.abs(logits - reference)) /
                                                       np.max(np.abs(reference)))
        p50 = percentile(times[backend], 50)
        record.update(p50_ms=1e3 * p50, p90_ms=1e3 * percentile(times[backend], 90), img_per_s=batch / p50,
                      calls=len(times[backend]))
      impl = entry['implementations']
      ratios = {}
      if 'ort_torch' in impl:
        ratios['ort_ours / ort_torch (p50)'] = impl['ort_ours']['p50_ms'] / impl['ort_torch']['p50_ms']
      if 'torch_eager' in impl:
        ratios['jax_folded / torch_eager (p50)'] = impl['jax_folded']['p50_ms'] / impl['torch_eager']['p50_ms']
        ratios['jax_unfolded / torch_eager (p50)'] = impl['jax_unfolded']['p50_ms'] / impl['torch_eager']['p50_ms']
      ratios['jax_folded / jax_unfolded (p50)'] = impl['jax_folded']['p50_ms'] / impl['jax_unfolded']['p50_ms']
      entry['ratios'] = ratios
      results.append(entry)
      print(json.dumps(entry), flush=True)
  for worker in workers.values():
    worker.close()
  report = {
      'benchmark': 'benchmarks/export_inference.py', 'issue': 26,
      'date': datetime.date.today().isoformat(), 'commit': git_commit(),
      'device': f'CPU: {cpu_name()}, {os.cpu_count()} cores (shared VM)', 'rounds': args.rounds, 'calls': calls,
      'load_average_1_5_15min': {'start': [round(v, 2) for v in load_before],
                                 'end': [round(v, 2) for v in os.getloadavg()]},
      'setup': info, 'results': results,
  }
  if args.json:
    with open(args.json, 'w') as file:
      file.write(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
  main()
