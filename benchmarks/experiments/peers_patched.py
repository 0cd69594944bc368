r"""benchmarks/peers.py plus resnet_jax variants with a patch of patched_benchmark.py applied, all in the same
interleaved run (before/after of an optimisation, beside the peers):

  python benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+lax_conv,haiku --batch_size 8
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import patched_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def _patched(make, patch):
  def build(batch, dtype):
    undo = patch()
    try:
      return make(batch, dtype)  # traces and compiles inside: the patch is in effect for the whole program
    finally:
      undo()
  return build


for _name, _patch in patched_benchmark.PATCHES.items():
  peers.IMPLEMENTATIONS[f'resnet_jax+{_name}'] = _patched(peers.make_resnet_jax, _patch)

if __name__ == '__main__':
  peers.main()
