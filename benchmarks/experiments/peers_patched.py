r"""benchmarks/peers.py plus resnet_jax variants with a patch of patched_benchmark.py applied, all in the same
interleaved run (before/after of an optimisation, beside the peers):

  python benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+lax_conv,haiku --batch_size 8
  python benchmarks/experiments/peers_patched.py --impls resnet_jax,resnet_jax+autodiff_bn --batch_size 8
  python benchmarks/experiments/peers_patched.py --workload cifar --batch_size 128 \
      --impls resnet_jax,resnet_jax+unmaterialized,torch_eager,torch_compile
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import patched_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
import peers  # pylint: disable=g-import-not-at-top,wrong-import-position


def _patched(make, names):
  def build(batch, dtype, **kwargs):
    undos = [patched_benchmark.PATCHES[name]() for name in names]
    try:
      return make(batch, dtype, **kwargs)  # traces and compiles inside: the patches are in effect for the whole program
    finally:
      for undo in reversed(undos):
        undo()
  return build


def _register(argv):
  """resnet_jax+P1+P2... in --impls: resnet_jax with those patches of patched_benchmark.py applied."""
  for arg in argv:
    for impl in arg.split(','):
      names = impl.split('+')
      if names[0] == 'resnet_jax' and len(names) > 1:
        unknown = [n for n in names[1:] if n not in patched_benchmark.PATCHES]
        if unknown:
          raise SystemExit(f'unknown patch {unknown[0]!r}; choose from {", ".join(patched_benchmark.PATCHES)}')
        peers.IMPLEMENTATIONS[impl] = _patched(peers.make_resnet_jax, names[1:])


_register(sys.argv[1:])

if __name__ == '__main__':
  peers.main()
