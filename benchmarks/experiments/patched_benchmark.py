r"""`python -m resnet_jax.benchmark` with experimental patches of other modules applied first (measurements for
changes proposed to files outside benchmarks/; nothing here is used by resnet_jax itself).

  PATCHES=fast_conv python benchmarks/experiments/patched_benchmark.py --config ... --json ...

PATCHES (comma-separated):
  fast_conv    resnet_jax.models.layers convolutions via benchmarks/experiments/fast_conv.py
  no_donate    train.make_resident_runner's jit without donate_argnums (to measure what donation buys)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def apply(patches):
  for name in [p.strip() for p in patches.split(',') if p.strip()]:
    if name == 'fast_conv':
      import fast_conv  # pylint: disable=g-import-not-at-top
      fast_conv.patch_layer_factory()
    elif name == 'no_donate':
      _no_donate()
    else:
      raise SystemExit(f'unknown patch {name!r}')


def _no_donate():
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


if __name__ == '__main__':
  apply(os.environ.get('PATCHES', ''))
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.main()
