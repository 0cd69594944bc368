r"""The PyTorch side of `benchmarks/peers.py --workload cifar`: CIFAR ResNets (He et al. 2015 §4.2) trained on one
fixed batch, driven step by step over stdin/stdout so that peers.py can interleave them with resnet_jax in one run.

Runs under a Python that has torch (here /work/torchvenv/bin/python; that environment has no jax, so peers.py
starts this file as a subprocess). One JSON object per line in, one per line out:

  {"cmd": "build", "name": "torch_eager:cifar_resnet20", "depth": 20, "compile": false, "batch": "/tmp/b.npz"}
      -> {"compile_s": ..., "params": ..., "torch_version": ...}
  {"cmd": "steps", "name": ..., "n": 3}   -> {"seconds": [...]}     (each step timed alone)
  {"cmd": "loss", "name": ...}            -> {"loss": mean training loss over every step run so far}
  {"cmd": "quit"}

Workload (the same as resnet_jax's in peers.py): 6n+2 layers, widths 16/32/64, basic units (3x3-BN-ReLU-3x3-BN,
add, ReLU), option-A shortcuts (stride-2 subsampling, zero channels appended: §3.3 and fb.resnet.torch), global
average pool, 10-way linear; the uint8 NHWC batch normalised in the step; softmax cross-entropy; SGD momentum 0.9
with coupled weight decay 1e-4 on every parameter (torch.optim.SGD's `weight_decay`), learning rate 0.1.
"compile": torch.compile (inductor) of the forward and loss (its backward is compiled by AOTAutograd too); the
optimiser step stays eager (foreach), as in torch's own training recipes.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LEARNING_RATE = 0.1


class BasicUnit(nn.Module):

  def __init__(self, in_features: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.stride = stride
    self.extra = features - in_features

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.extra:  # option A: zero channels appended after the existing ones
      shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
    return F.relu(y + shortcut)


class CifarResNet(nn.Module):

  def __init__(self, depth: int, num_classes: int = 10):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f'depth {depth} is not 6n+2')
    n = (depth - 2) // 6
    self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(16)
    units, in_features = [], 16
    for stage, features in enumerate((16, 32, 64)):
      for i in range(n):
        units.append(BasicUnit(in_features, features, 2 if stage and not i else 1))
        in_features = features
    self.units = nn.Sequential(*units)
    self.head = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.relu(self.bn(self.stem(x)))
    x = self.units(x)
    return self.head(x.mean(dim=(2, 3)))


class Peer:

  def __init__(self, depth: int, compile_model: bool, batch: dict[str, np.ndarray], mean, std):
    self.model = CifarResNet(depth)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                               weight_decay=WEIGHT_DECAY)
    self.images = torch.from_numpy(batch['image'])            # uint8 NHWC, as the JAX side gets it
    self.labels = torch.from_numpy(batch['label']).long()
    self.mean = torch.tensor(mean).view(1, 3, 1, 1)
    self.std = torch.tensor(std).view(1, 3, 1, 1)
    self.loss_sum, self.steps = 0.0, 0

    def forward_loss(images, labels):
      x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
      return F.cross_entropy(self.model(x), labels)

    self.forward_loss = torch.compile(forward_loss) if compile_model else forward_loss
    started = time.perf_counter()
    for _ in range(2 if compile_model else 1):  # torch.compile compiles lazily on the first calls
      self.step()
    self.compile_s = time.perf_counter() - started

  def step(self):
    loss = self.forward_loss(self.images, self.labels)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.loss_sum += float(loss.detach())  # also the synchronisation point (CPU: already done)
    self.steps += 1


def main():
  peers: dict[str, Peer] = {}
  for line in sys.stdin:
    request = json.loads(line)
    cmd = request['cmd']
    if cmd == 'quit':
      break
    if cmd == 'build':
      torch.set_num_threads(int(request.get('threads', torch.get_num_threads())))
      with np.load(request['batch']) as data:
        batch = {key: data[key] for key in data.files}
      peer = Peer(int(request['depth']), bool(request['compile']), batch, request['mean'], request['std'])
      peers[request['name']] = peer
      reply = {'compile_s': peer.compile_s, 'params': sum(p.numel() for p in peer.model.parameters()),
               'torch_version': torch.__version__, 'threads': torch.get_num_threads()}
    elif cmd == 'steps':
      peer, seconds = peers[request['name']], []
      for _ in range(int(request['n'])):
        t0 = time.perf_counter()
        peer.step()
        seconds.append(time.perf_counter() - t0)
      reply = {'seconds': seconds}
    elif cmd == 'loss':
      peer = peers[request['name']]
      reply = {'loss': peer.loss_sum / max(peer.steps, 1)}
    else:
      reply = {'error': f'unknown command {cmd!r}'}
    print(json.dumps(reply), flush=True)


if __name__ == '__main__':
  main()
