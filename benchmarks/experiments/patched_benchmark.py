r"""`python -m resnet_jax.benchmark` with experimental patches of other modules applied first (measurements for
changes proposed to files outside benchmarks/; nothing here is used by resnet_jax itself).

  PATCHES=fast_conv python benchmarks/experiments/patched_benchmark.py --config ... --json ...

PATCHES (comma-separated):
  fast_conv    resnet_jax.models.layers convolutions via benchmarks/experiments/fast_conv.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def apply(patches):
  for name in [p.strip() for p in patches.split(',') if p.strip()]:
    if name == 'fast_conv':
      import fast_conv  # pylint: disable=g-import-not-at-top
      fast_conv.patch_layer_factory()
    else:
      raise SystemExit(f'unknown patch {name!r}')


if __name__ == '__main__':
  apply(os.environ.get('PATCHES', ''))
  from resnet_jax import benchmark  # pylint: disable=g-import-not-at-top
  benchmark.main()
