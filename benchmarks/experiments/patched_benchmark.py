r"""`python -m resnet_jax.benchmark` with a change to resnet_jax undone or applied first: the "before" side of a
before/after measurement of an optimisation (nothing here is used by resnet_jax itself).

  PATCHES=lax_conv python benchmarks/experiments/patched_benchmark.py --config ... --json ...

PATCHES (comma-separated):
  lax_conv     every convolution of the zoo through plain flax nn.Conv / lax.conv_general_dilated, i.e. without
               resnet_jax.models.conv's CPU rewrite
  lax_grouped_conv  grouped convolutions (ResNeXt) through plain lax.conv_general_dilated, the others through
               resnet_jax.models.conv (its form before grouped convolutions got the canonical backward pass)
  no_donate    train.make_resident_runner's jit without donate_argnums (what buffer donation buys)
  autodiff_bn  BatchNorm's training arithmetic as plain two-pass statistics differentiated by JAX
               (models.testing.batch_norm_train_reference), i.e. without layers.batch_norm_train's written-out
               gradient and fused ReLU
  two_pass_bn  layers.batch_norm_train with two-pass statistics (E[(x - E[x])^2]) instead of one pass
"""

import os
import types


def lax_conv():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  original = layers.conv_lib
  layers.conv_lib = types.SimpleNamespace(Conv=nn.Conv)

  def undo():
    layers.conv_lib = original
  return undo


def lax_grouped_conv():
  import functools  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import conv  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top

  def conv_general_dilated(lhs, rhs, *args, **kwargs):
    if kwargs.get('feature_group_count', 1) != 1:
      return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return conv.conv_general_dilated(lhs, rhs, *args, **kwargs)
  original = layers.conv_lib
  patched_conv = functools.partial(conv.Conv, conv_general_dilated=conv_general_dilated)
  layers.conv_lib = types.SimpleNamespace(Conv=patched_conv)

  def undo():
    layers.conv_lib = original
  return undo


def no_donate():
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  original = train.make_resident_runner

  def make_resident_runner(exp):
    real_jit = jax.jit

    def jit(*args, **kwargs):
      kwargs.pop('donate_argnums', None)
      return real_jit(*args, **kwargs)
    jax.jit = jit
    try:
      return original(exp)
    finally:
      jax.jit = real_jit
  train.make_resident_runner = make_resident_runner

  def undo():
    train.make_resident_runner = original
  return undo


def autodiff_bn():
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import testing  # pylint: disable=g-import-not-at-top
  original = layers.batch_norm_train
  layers.batch_norm_train = testing.batch_norm_train_reference

  def undo():
    layers.batch_norm_train = original
  return undo


def two_pass_bn():
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import testing  # pylint: disable=g-import-not-at-top
  original = layers._bn_statistics  # pylint: disable=protected-access
  layers._bn_statistics = testing.two_pass_statistics  # pylint: disable=protected-access

  def undo():
    layers._bn_statistics = original  # pylint: disable=protected-access
  return undo


PATCHES = {'lax_conv': lax_conv, 'lax_grouped_conv': lax_grouped_conv, 'no_donate': no_donate,
           'autodiff_bn': autodiff_bn, 'two_pass_bn': two_pass_bn}


def apply(names: str):
  for name in [p.strip() for p in names.split(',') if p.strip()]:
    if name not in PATCHES:
      raise SystemExit(f'unknown patch {name!r}; choose from {", ".join(PATCHES)}')
    PATCHES[name]()


if __name__ == '__main__':
  apply(os.environ.get('PATCHES', ''))
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.main()
