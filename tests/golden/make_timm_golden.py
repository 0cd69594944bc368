r"""Writes the timm golden files of tests/test_convert.py: timm's logits for NumPy-generated weights of the
"Bag of Tricks" ResNets (He et al. 2019 §4.2: deep stem, average-pool projection), as make_torchvision_golden.py
does for torchvision's.

    /work/torchvenv/bin/pip install timm==1.0.31            # torch + torchvision + NumPy already there
    /work/torchvenv/bin/python tests/golden/make_timm_golden.py      # -> tests/golden/timm/

Needs torch, timm and NumPy only (not resnet_jax or JAX). The weights are `weights.py`'s, a function of each timm
tensor name and shape; the files have the layout of the torchvision ones (timm/{model}.json: header and manifest,
timm/{model}.npz: logits_{size}). 193 is odd at every stride, so each ResNet-D pool (ceil mode, padding not
counted) ends in a partial window.
"""

from __future__ import annotations

import os
import sys

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_torchvision_golden  # pylint: disable=g-import-not-at-top,wrong-import-position
import weights  # pylint: disable=g-import-not-at-top,wrong-import-position

# One of each layout: basic units + ResNet-D, bottlenecks + ResNet-D, ResNet-C (deep stem, strided projection).
MODELS = ('resnet18d', 'resnet26d', 'resnet50c')
SIZES = make_torchvision_golden.SIZES
BATCH = make_torchvision_golden.BATCH


def timm_model(name: str, state_dict=None):
  model = timm.create_model(name, pretrained=False).eval()
  if state_dict is not None:
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  return model


def write(out: str, name: str) -> None:
  tensors = [(k, list(v.shape)) for k, v in timm_model(name).state_dict().items()]
  model = timm_model(name, weights.state_dict(tensors))
  with torch.no_grad():
    logits = {f'logits_{size}': model(torch.from_numpy(weights.images(BATCH, size))).numpy() for size in SIZES}
  for size in SIZES:
    make_torchvision_golden.check_spread(name, size, logits[f'logits_{size}'])
  make_torchvision_golden.write_golden(out, name, dict(torch=torch.__version__, timm=timm.__version__), tensors,
                                      logits)


if __name__ == '__main__':
  make_torchvision_golden.main(__doc__, 'timm', MODELS, write)
