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
import os
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'peers'))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position  (benchmarks/peers/)

MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LEARNING_RATE = 0.1


class Peer:

  def __init__(self, depth: int, compile_model: bool, batch: dict[str, np.ndarray], mean, std):
    # The option-A CIFAR ResNet of the PyTorch reference trainer (issue 22), the network proven equal to
    # resnet_jax's step for step.
    self.model = torch_reference.create_model(f'cifar_resnet{depth}', num_classes=10)
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
