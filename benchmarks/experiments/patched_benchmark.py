r"""`python -m resnet_jax.benchmark` with a change to resnet_jax undone or applied first: the "before" side of a
before/after measurement of an optimisation (nothing here is used by resnet_jax itself).

  PATCHES=lax_conv python benchmarks/experiments/patched_benchmark.py --config ... --json ...

PATCHES (comma-separated):
  lax_conv     every convolution of the zoo through plain flax nn.Conv / lax.conv_general_dilated, i.e. without
               resnet_jax.models.conv's CPU rewrite
  lax_grouped_conv  grouped convolutions (ResNeXt) through plain lax.conv_general_dilated, the others through
               resnet_jax.models.conv (its form before grouped convolutions got the canonical backward pass)
  no_donate    train.make_runner's jit without donate_argnums (what buffer donation buys)
  autodiff_bn  BatchNorm's training arithmetic as plain two-pass statistics differentiated by JAX
               (layers.batch_norm_train_reference), i.e. without layers.batch_norm_train's written-out
               gradient and fused ReLU
  two_pass_bn  layers.batch_norm_train with two-pass statistics (E[(x - E[x])^2]) instead of one pass
  unmaterialized  convolution inputs as XLA fuses them (conv.materialized the identity): the form before issue
               27's fix, where every reader of a convolution's input recomputes the residual stream
  gpu_maxpool  (a candidate, the "after" side) the ImageNet stem's max-pool with the written-out gradient of
               experiments/gpu_kernels.py instead of XLA's select-and-scatter
"""

import os


def _swap_fast_kernels(conv=None, batch_norm_train=None):
  """Replaces parts of layers.KERNELS['fast'] (the models' default) and returns the undo."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  original = layers.KERNELS['fast']
  changes = {k: v for k, v in dict(conv=conv, batch_norm_train=batch_norm_train).items() if v is not None}
  layers.KERNELS['fast'] = dataclasses.replace(original, **changes)

  def undo():
    layers.KERNELS['fast'] = original
  return undo


def lax_conv():
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  return _swap_fast_kernels(conv=layers.KERNELS['reference'].conv)


def lax_grouped_conv():
  import functools  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from resnet_jax.models import conv  # pylint: disable=g-import-not-at-top

  def conv_general_dilated(lhs, rhs, *args, **kwargs):
    if kwargs.get('feature_group_count', 1) != 1:
      return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
    return conv.conv_general_dilated(lhs, rhs, *args, **kwargs)
  return _swap_fast_kernels(conv=functools.partial(conv.Conv, conv_general_dilated=conv_general_dilated))


def no_donate():
  import jax  # pylint: disable=g-import-not-at-top
  from resnet_jax import train  # pylint: disable=g-import-not-at-top
  original = train.make_runner

  def make_runner(*args, **kwargs):
    real_jit = jax.jit

    def jit(*args, **kwargs):
      kwargs.pop('donate_argnums', None)
      return real_jit(*args, **kwargs)
    jax.jit = jit
    try:
      return original(*args, **kwargs)
    finally:
      jax.jit = real_jit
  train.make_runner = make_runner

  def undo():
    train.make_runner = original
  return undo


def autodiff_bn():
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  return _swap_fast_kernels(batch_norm_train=layers.batch_norm_train_reference)


def two_pass_bn():
  from resnet_jax.models import layers  # pylint: disable=g-import-not-at-top
  original = layers.one_pass_statistics
  layers.one_pass_statistics = layers.two_pass_statistics

  def undo():
    layers.one_pass_statistics = original
  return undo


def gpu_maxpool():
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import gpu_kernels  # pylint: disable=g-import-not-at-top
  return gpu_kernels.patch_max_pool()


def unmaterialized():
  from resnet_jax.models import conv  # pylint: disable=g-import-not-at-top
  original = conv.materialized
  conv.materialized = lambda x: x

  def undo():
    conv.materialized = original
  return undo


PATCHES = {'lax_conv': lax_conv, 'lax_grouped_conv': lax_grouped_conv, 'no_donate': no_donate,
           'autodiff_bn': autodiff_bn, 'two_pass_bn': two_pass_bn, 'gpu_maxpool': gpu_maxpool,
           'unmaterialized': unmaterialized}


def apply(names: str):
  for name in [p.strip() for p in names.split(',') if p.strip()]:
    if name not in PATCHES:
      raise SystemExit(f'unknown patch {name!r}; choose from {", ".join(PATCHES)}')
    PATCHES[name]()


if __name__ == '__main__':
  apply(os.environ.get('PATCHES', ''))
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.main()
