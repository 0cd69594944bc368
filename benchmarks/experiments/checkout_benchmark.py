"""`python -m resnet_jax.benchmark` run from another checkout of the repository, for before/after comparisons
with benchmarks/compare.py:

  git worktree add /tmp/before <commit>
  python benchmarks/compare.py --common "..." --variant "after::" \
      --variant "before:RUNNER=benchmarks/experiments/checkout_benchmark.py CHECKOUT=/tmp/before:"

CHECKOUT (environment) is the other checkout's root; its resnet_jax package is imported instead of this one.
"""

import os
import runpy
import sys

checkout = os.path.abspath(os.environ['CHECKOUT'])
sys.path.insert(0, checkout)
os.chdir(checkout)  # its configs/ too
runpy.run_module('resnet_jax.benchmark', run_name='__main__', alter_sys=True)
