"""Per-model cache of compiled analysis functions."""

import functools


def per_model(build):
  """Caches `build(model)` (a jitted function) per model. Flax modules compare and hash by their attributes, so
  repeated analyses of the same model reuse one compilation; a model with unhashable attributes is rebuilt."""
  cached = functools.lru_cache(maxsize=16)(build)

  @functools.wraps(build)
  def get(model):
    try:
      hash(model)
    except TypeError:
      return build(model)
    return cached(model)

  return get
