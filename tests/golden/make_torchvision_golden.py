r"""Writes the golden files of tests/test_convert.py: torchvision's logits for NumPy-generated weights.

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision numpy
    /tmp/tv/bin/python tests/golden/make_torchvision_golden.py      # -> tests/golden/torchvision/

Needs torch, torchvision and NumPy only (not resnet_jax or JAX). For each model it builds torchvision's network,
loads the weights of `weights.py` (a function of each tensor's name and shape) and writes
  torchvision/{model}.json  the generator's parameters, the versions, and the manifest: every state-dict tensor's
                            name and shape in torchvision's order (what the test rebuilds the weights from);
  torchvision/{model}.npz   logits_{size} for the fixed input `weights.images(BATCH, size)` of each size, eval
                            mode, float32.
193 is odd at every stride: it checks that torch's symmetric padding is what the zoo's models do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import weights  # pylint: disable=g-import-not-at-top,wrong-import-position

MODELS = ('resnet18', 'resnet50', 'resnext50_32x4d', 'wide_resnet50_2')
SIZES = (224, 193)
BATCH = 2


def torchvision_logits(name: str, size: int, state_dict) -> np.ndarray:
  """torchvision's `name` in eval mode with `state_dict` loaded (strictly), on `weights.images(BATCH, size)`."""
  model = getattr(torchvision.models, name)(weights=None).eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  with torch.no_grad():
    return model(torch.from_numpy(weights.images(BATCH, size))).numpy()


def manifest(name: str) -> list[tuple[str, list[int]]]:
  return [(k, list(v.shape)) for k, v in getattr(torchvision.models, name)(weights=None).state_dict().items()]


def check_spread(name: str, size: int, logits: np.ndarray) -> None:
  """Logits on the scale of a trained net's: finite, a spread of O(1) over the classes, and different for the
  two images. Weights on the wrong scale give logits that explode or vanish, and a test on them proves little."""
  std = logits.std(axis=1)
  peak = np.abs(logits).max()
  between = np.abs(logits[0] - logits[1]).max() / peak
  print(f'{name} {size}x{size}: logit std over classes {np.round(std, 3)}, max |logit| {peak:.3f}, '
        f'max |difference between the images| / max |logit| {between:.3f}')
  if not (np.isfinite(logits).all() and (std > 0.1).all() and (std < 100).all() and between > 0.05):
    raise SystemExit(f'{name}: logits out of a sane range; change the scales in weights.py')


def write(out: str, name: str) -> None:
  tensors = manifest(name)
  state_dict = weights.state_dict(tensors)
  logits = {f'logits_{size}': torchvision_logits(name, size, state_dict) for size in SIZES}
  for size in SIZES:
    check_spread(name, size, logits[f'logits_{size}'])
  write_golden(out, name, dict(torch=torch.__version__, torchvision=torchvision.__version__), tensors, logits)


def write_golden(out, name, versions, tensors, logits) -> None:
  """OUT/NAME.json (header with `versions` and the tensor manifest) and OUT/NAME.npz (the logits)."""
  header = dict(model=name, **versions, base_seed=weights.BASE_SEED, input_seed=weights.INPUT_SEED, batch=BATCH,
                sizes=list(SIZES), dtype='float32', mode='eval')
  # One tensor per line: readable, and a library change shows as a small diff.
  lines = [json.dumps(header)[:-1] + ', "tensors": [']
  lines += [f'  {json.dumps([k, shape])},' for k, shape in tensors]
  lines[-1] = lines[-1][:-1]
  lines.append(']}')
  with open(os.path.join(out, f'{name}.json'), 'w') as file:
    file.write('\n'.join(lines) + '\n')
  np.savez_compressed(os.path.join(out, f'{name}.npz'), **logits)


def main(description: str = __doc__, library: str = 'torchvision', models=MODELS, write_model=write) -> None:
  """The command line of this generator and of make_timm_golden.py: `write_model(OUT, name)` for each model."""
  parser = argparse.ArgumentParser(description=description.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), library))
  parser.add_argument('--models', nargs='*', default=models)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  torch.set_grad_enabled(False)
  for name in args.models:
    write_model(args.out, name)


if __name__ == '__main__':
  main()
