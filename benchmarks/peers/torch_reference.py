r"""A PyTorch reference trainer for the papers' CIFAR recipe (the `torch` extra: `pip install -e ".[torch]"`).

Written from the recipe as fb.resnet.torch and torchvision's references do it, independently of resnet_jax's code:
  - networks: He et al. 2015's CIFAR ResNet-(6n+2) with option-A shortcuts (stride-2 subsampling, zero channels
    appended: fb.resnet.torch's `nn.Concat(x, x:mul(0))`), its full pre-activation version (He et al. 2016), and
    torchvision's `resnet50` (bottleneck, option B, for the ImageNet-style check);
  - torch's BatchNorm2d (momentum 0.1, eps 1e-5, unbiased running variance), He normal fan_out convolutions,
    torch's default nn.Linear head (torchvision's initialisation);
  - `torch.optim.SGD` with momentum 0.9 and coupled weight decay (wd * p added to the gradient before the momentum
    buffer, on every parameter), `MultiStepLR` stepped once per iteration (lr / 10 at each milestone step);
  - softmax cross-entropy averaged over the batch;
  - input: per-channel statistics of the training split, then (fb.resnet.torch's order) normalise, zero-pad 4,
    random 32x32 crop, random horizontal flip. `pad='black'` pads the raw image with 0 instead (torchvision's
    `RandomCrop(32, padding=4)` before `ToTensor`/`Normalize`).

Two ways to run it:
  `replay(...)`: from given weights (a state dict) on given batches (the dataset indices, crop offsets and flips
    that resnet_jax's device-resident pipeline draws, `tests/golden/training_parity.py:batch_plan`), recording per
    step the loss, the parameters and the BN running statistics: the step-for-step equivalence
    (tests/golden/make_training_golden.py, tests/test_training_parity.py).
  `python benchmarks/peers/torch_reference.py --train DIR/train.npz --test DIR/test.npz --workdir OUT --seed S
    --steps 540`: an independent run, as one would train with torch (its own initialisation from torch's RNG, its
    own data order: a fresh `torch.randperm` per epoch, batches that may straddle epochs as resnet_jax's, or
    `--epoch_end short/drop`: a DataLoader's short or dropped last batch); writes OUT/metrics.jsonl in resnet_jax's format
    (`train_loss`, `train_accuracy`, `learning_rate` every --log_every steps; `test_accuracy`, `test_error`,
    `test_loss` at --eval_every and the end) and OUT/config.json, so `python -m resnet_jax.plot` draws it beside
    resnet_jax's runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------
# Networks. Module names follow torchvision's (conv1, bn1, layer{s}.{j}.conv{i}/bn{i}, fc), so that
# resnet_jax.convert's naming (`convert.torch_name`) maps them onto resnet_jax's variables; the pre-activation
# net's last BN is `final_bn`, as resnet_jax names it.


def _he_fan_out(module: nn.Module) -> None:
  for m in module.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


def _option_a(x: torch.Tensor, planes: int, stride: int) -> torch.Tensor:
  """He et al. 2015 option A: subsample by `stride`, append zero channels."""
  if stride > 1:
    x = x[:, :, ::stride, ::stride]
  extra = planes - x.shape[1]
  return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN, add the shortcut, ReLU (He et al. 2015)."""

  def __init__(self, in_planes: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.planes, self.stride = planes, stride

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + _option_a(x, self.planes, self.stride))


class PreActBlock(nn.Module):
  """BN-ReLU-conv-BN-ReLU-conv, add (He et al. 2016 (e)). Where the unit changes shape, and in the network's first
  unit, the shortcut takes the pre-activated input (fb.resnet.torch preresnet 'both_preact'); else the raw one."""

  def __init__(self, in_planes: int, planes: int, stride: int, shared_preact: bool):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.planes, self.stride, self.shared_preact = planes, stride, shared_preact

  def forward(self, x):
    pre = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
    return out + _option_a(pre if self.shared_preact else x, self.planes, self.stride)


class CifarResNet(nn.Module):
  """3x3 stem (16), three stages of `n` units at 16/32/64 planes (stride 2 into stages 2 and 3), global average
  pooling, a linear head. `preact`: the full pre-activation network (stem without BN, BN-ReLU before pooling)."""

  def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3, preact: bool = False,
               widths: Sequence[int] = (16, 32, 64)):
    super().__init__()
    self.preact = preact
    self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    if not preact:
      self.bn1 = nn.BatchNorm2d(widths[0])
    in_planes = widths[0]
    for s, planes in enumerate(widths, start=1):
      blocks = []
      for j in range(n):
        stride = 2 if s > 1 and j == 0 else 1
        if preact:
          shared = (s == 1 and j == 0) or stride != 1 or in_planes != planes
          blocks.append(PreActBlock(in_planes, planes, stride, shared))
        else:
          blocks.append(BasicBlock(in_planes, planes, stride))
        in_planes = planes
      setattr(self, f'layer{s}', nn.Sequential(*blocks))
    if preact:
      self.final_bn = nn.BatchNorm2d(in_planes)
    self.fc = nn.Linear(in_planes, num_classes)
    _he_fan_out(self)

  def forward(self, x):
    x = self.conv1(x)
    if not self.preact:
      x = F.relu(self.bn1(x))
    x = self.layer3(self.layer2(self.layer1(x)))
    if self.preact:
      x = F.relu(self.final_bn(x))
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create_model(name: str, num_classes: int, in_channels: int = 3, stage_sizes: Optional[Sequence[int]] = None
                 ) -> nn.Module:
  """'cifar_resnet{6n+2}', 'cifar_preact_resnet{6n+2}' (stage_sizes=(n, n, n) overrides the depth) or 'resnet50'
  (torchvision's; stage_sizes overrides its (3, 4, 6, 3))."""
  if name.startswith('cifar_'):
    depth = int(name.rsplit('resnet', 1)[1])
    n = stage_sizes[0] if stage_sizes else (depth - 2) // 6
    return CifarResNet(n, num_classes, in_channels, preact='preact' in name)
  if name == 'resnet50':
    import torchvision  # pylint: disable=import-outside-toplevel
    from torchvision.models.resnet import Bottleneck, ResNet  # pylint: disable=import-outside-toplevel
    model = ResNet(Bottleneck, list(stage_sizes or (3, 4, 6, 3)), num_classes=num_classes)
    if in_channels != 3:
      model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
      nn.init.kaiming_normal_(model.conv1.weight, mode='fan_out', nonlinearity='relu')
    del torchvision
    return model
  raise ValueError(f'unknown reference model {name!r}')


# ----------------------------------------------------------------------------------------------------------
# Input.


def channel_statistics(images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of a training split in [0, 255], float64 (fb.resnet.torch computes
  them from the training set)."""
  x = np.asarray(images_uint8, np.float64)
  return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


def augment(images_uint8: np.ndarray, mean, std, offsets: np.ndarray, flips: np.ndarray, padding: int,
            pad: str = 'mean') -> torch.Tensor:
  """NHWC uint8 -> NCHW float32: normalise, zero-pad, crop at `offsets` (row, column in the padded image), flip.
  pad='black' pads the raw image with 0 before normalising (torchvision's RandomCrop on the PIL image)."""
  x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
  m = torch.tensor(np.asarray(mean, np.float32)).view(1, -1, 1, 1)
  s = torch.tensor(np.asarray(std, np.float32)).view(1, -1, 1, 1)
  height, width = x.shape[2:]
  if pad == 'black':
    x = F.pad(x, (padding,) * 4) if padding else x
    x = (x - m) / s
  else:
    x = (x - m) / s
    x = F.pad(x, (padding,) * 4) if padding else x
  out = torch.stack([x[i, :, r:r + height, c:c + width] for i, (r, c) in enumerate(np.asarray(offsets))])
  flips = torch.from_numpy(np.asarray(flips, bool))
  return torch.where(flips.view(-1, 1, 1, 1), out.flip(3), out).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Optimisation.


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float,
                   milestones: Sequence[int], gamma: float = 0.1):
  optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
  scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
  return optimizer, scheduler


def train_step(model: nn.Module, optimizer, scheduler, images: torch.Tensor, labels: torch.Tensor):
  """One SGD step in train mode; returns (loss, correct) of the batch before the update."""
  model.train()
  logits = model(images)
  loss = F.cross_entropy(logits, labels)
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  optimizer.step()
  scheduler.step()
  return loss.detach(), (logits.argmax(1) == labels).sum()


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
  """name -> float32 NumPy value of every parameter and running statistic (num_batches_tracked dropped)."""
  return {name: value.detach().cpu().float().numpy().copy() for name, value in model.state_dict().items()
          if not name.endswith('num_batches_tracked')}


def replay(model_name: str, state_dict: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
           plan: dict[str, np.ndarray], *, mean, std, padding: int, lr: float, momentum: float, weight_decay: float,
           milestones: Sequence[int], num_classes: int, stage_sizes=None, pad: str = 'mean',
           record: Callable[[int, dict[str, np.ndarray]], None] = None) -> dict[str, Any]:
  """Trains from `state_dict` on the batches of `plan` ({'indices' [S, B], 'offsets' [S, B, 2], 'flip' [S, B]}),
  float32 on the CPU. Returns {'loss': [S], 'lr': [S], 'final': state_arrays}; `record(step, state)` is called
  after every step with the state arrays (for per-step comparisons)."""
  torch.manual_seed(0)
  model = create_model(model_name, num_classes, images.shape[-1], stage_sizes)
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, strict=False)
  optimizer, scheduler = make_optimizer(model, lr, momentum, weight_decay, milestones)
  losses, lrs = [], []
  for step in range(len(plan['indices'])):
    idx = np.asarray(plan['indices'][step])
    x = augment(images[idx], mean, std, plan['offsets'][step], plan['flip'][step], padding, pad)
    y = torch.from_numpy(np.asarray(labels[idx], np.int64))
    lrs.append(optimizer.param_groups[0]['lr'])
    loss, _ = train_step(model, optimizer, scheduler, x, y)
    losses.append(float(loss))
    if record is not None:
      record(step, state_arrays(model))
  return {'loss': losses, 'lr': lrs, 'final': state_arrays(model)}


# ----------------------------------------------------------------------------------------------------------
# An independent run (its own initialisation and data order), logged as a resnet_jax workdir.


def _evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std, device, batch: int = 500):
  model.eval()
  correct, total_loss = 0, 0.0
  with torch.no_grad():
    for start in range(0, len(labels), batch):
      x = augment(images[start:start + batch], mean, std, np.zeros((len(labels[start:start + batch]), 2), int),
                  np.zeros(len(labels[start:start + batch]), bool), 0).to(device)
      y = torch.from_numpy(np.asarray(labels[start:start + batch], np.int64)).to(device)
      logits = model(x)
      total_loss += float(F.cross_entropy(logits, y, reduction='sum'))
      correct += int((logits.argmax(1) == y).sum())
  return correct / len(labels), total_loss / len(labels)


def _batches(num_examples: int, batch_size: int, epoch_end: str):
  """Index batches from a fresh torch.randperm per epoch. epoch_end 'straddle': epochs follow each other without a
  gap, a batch may hold the end of one and the start of the next (resnet_jax's order); 'short': a DataLoader's
  (drop_last=False) short last batch; 'drop': drop_last=True."""
  carry = np.zeros((0,), np.int64)
  while True:
    order = torch.randperm(num_examples).numpy()
    if epoch_end == 'straddle':
      order = np.concatenate([carry, order])
      whole = len(order) // batch_size * batch_size
      carry = order[whole:]
      order = order[:whole]
    for start in range(0, len(order), batch_size):
      chunk = order[start:start + batch_size]
      if len(chunk) == batch_size or epoch_end == 'short':
        yield chunk


def train_independent(args) -> dict[str, Any]:
  torch.manual_seed(args.seed)
  np_rng = np.random.default_rng(args.seed)
  train, test = np.load(args.train), np.load(args.test)
  images, labels = train['images'], train['labels'].astype(np.int64)
  test_images, test_labels = test['images'], test['labels'].astype(np.int64)
  num_classes = int(max(labels.max(), test_labels.max()) + 1)
  if args.stats == 'split':
    mean, std = channel_statistics(images)
  else:  # the constants many torch CIFAR scripts copy (torchvision-style, in [0, 255])
    mean, std = np.array([0.4914, 0.4822, 0.4465]) * 255, np.array([0.2470, 0.2435, 0.2616]) * 255
  device = torch.device(args.device)
  model = create_model(args.model, num_classes, images.shape[-1]).to(device)
  if args.head_init == 'zero_bias':  # fb.resnet.torch: nn.Linear's bias zeroed
    nn.init.zeros_(model.fc.bias)
  milestones = [int(round(f * args.steps)) for f in args.milestones]
  optimizer, scheduler = make_optimizer(model, args.lr, args.momentum, args.weight_decay, milestones)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, 'config.json'), 'w') as f:
    json.dump({'implementation': 'torch_reference', **vars(args), 'mean': list(mean), 'std': list(std),
               'milestones_steps': milestones,
               # resnet_jax.plot labels a run by its model name
               'model': {'name': f'torch_reference {args.model}'}}, f, indent=1)
  log = open(os.path.join(args.workdir, 'metrics.jsonl'), 'w')
  batches = _batches(len(labels), args.batch_size, args.epoch_end)
  totals = [0.0, 0, 0]
  started = time.perf_counter()
  for step in range(args.steps):
    take = next(batches)
    idx = np.asarray(take)
    offsets = np_rng.integers(0, 2 * args.padding + 1, (len(idx), 2))
    flips = np_rng.random(len(idx)) < 0.5
    x = augment(images[idx], mean, std, offsets, flips, args.padding, args.pad).to(device)
    y = torch.from_numpy(labels[idx]).to(device)
    lr = optimizer.param_groups[0]['lr']
    loss, correct = train_step(model, optimizer, scheduler, x, y)
    totals[0] += float(loss) * len(idx)
    totals[1] += int(correct)
    totals[2] += len(idx)
    if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
      log.write(json.dumps({'step': step + 1, 'train_loss': totals[0] / totals[2],
                            'train_accuracy': totals[1] / totals[2], 'learning_rate': lr,
                            'images_per_sec': totals[2] / (time.perf_counter() - started)}) + '\n')
      totals, started = [0.0, 0, 0], time.perf_counter()
    if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
      accuracy, test_loss = _evaluate(model, test_images, test_labels, mean, std, device)
      log.write(json.dumps({'step': step + 1, 'test_accuracy': accuracy, 'test_error': 1 - accuracy,
                            'test_loss': test_loss}) + '\n')
      log.flush()
  log.close()
  return {'test_accuracy': accuracy, 'test_loss': test_loss}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--train', required=True, help='npz with images (uint8 NHWC) and labels')
  parser.add_argument('--test', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--model', default='cifar_resnet20')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--steps', type=int, default=540)
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--lr', type=float, default=0.1)
  parser.add_argument('--momentum', type=float, default=0.9)
  parser.add_argument('--weight_decay', type=float, default=1e-4)
  parser.add_argument('--milestones', type=float, nargs='*', default=[0.5, 0.75], help='fractions of --steps')
  parser.add_argument('--padding', type=int, default=4)
  parser.add_argument('--pad', choices=['mean', 'black'], default='mean')
  parser.add_argument('--stats', choices=['split', 'constants'], default='split')
  parser.add_argument('--head_init', choices=['torch', 'zero_bias'], default='torch')
  parser.add_argument('--epoch_end', choices=['straddle', 'short', 'drop'], default='straddle',
                      help="straddle: batches run across epoch ends (as resnet_jax's); short / drop: a DataLoader's "
                           "drop_last=False / True")
  parser.add_argument('--log_every', type=int, default=20)
  parser.add_argument('--eval_every', type=int, default=100)
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--threads', type=int, default=0)
  args = parser.parse_args(argv)
  torch.backends.cudnn.allow_tf32 = False  # float32 as on the CPU (TF32 would round convolution inputs to 10 bits)
  torch.backends.cuda.matmul.allow_tf32 = False
  if args.threads:
    torch.set_num_threads(args.threads)
  result = train_independent(args)
  print(json.dumps({'workdir': args.workdir, 'seed': args.seed, 'steps': args.steps, **result}))


if __name__ == '__main__':
  main()
