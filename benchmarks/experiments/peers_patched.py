r"""benchmarks/peers.py plus resnet_jax variants with experimental patches (see patched_benchmark.py), all in
the same interleaved run:

  python benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+fast_conv,haiku --batch_size 8
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fast_conv  # pylint: disable=g-import-not-at-top,wrong-import-position
import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def _patched(make, patch):
  def build(batch, dtype):
    undo = patch()
    try:
      return make(batch, dtype)  # traces and compiles inside: the patch is in effect for the whole program
    finally:
      undo()
  return build


peers.IMPLEMENTATIONS['resnet_jax+fast_conv'] = _patched(peers.make_resnet_jax, fast_conv.patch_layer_factory)

if __name__ == '__main__':
  peers.main()
