"""ResNet-B/C/D of "Bag of Tricks" (He et al. 2019 §4.2) as model options: the deep stem (`stem='deep'`) and the
average-pool projection (`downsample='avg'`), against NumPy re-statements of timm's layers, and with the zoo's
other options (scan_units, bf16, ghost BN, lesions). Parameter counts: test_models_zoo.py (timm's, every name);
MACs against the paper's Table 5: test_models_params.py; logits against timm: test_convert.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_variables
from resnet_jax import export
from resnet_jax.errors import UserError
from resnet_jax.models import create_model, layers, scan_variables
from resnet_jax.models.counting import abstract_variables


def torch_ceil_average_pool(x, stride):
  """torch AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) on NHWC, written out: a window starts at
  every multiple of `stride` inside the input and averages the cells it covers there."""
  _, height, width, _ = x.shape
  rows = [x[:, i:i + 2] for i in range(0, height, stride) if i < height]
  out = np.stack([np.stack([r[:, :, j:j + 2].mean(axis=(1, 2)) for j in range(0, width, stride)], axis=1)
                  for r in rows], axis=1)
  return out


@pytest.mark.parametrize("size", [11, 12, 7, 1])
def test_average_pool_keeps_the_partial_window_of_odd_sizes(size):
  x = np.random.default_rng(size).standard_normal((2, size, size + 1, 3)).astype(np.float32)
  got = np.asarray(layers.average_pool_2x2(jnp.asarray(x), 2))
  assert got.shape == (2, -(-size // 2), -(-(size + 1) // 2), 3)  # 11 -> 6, the JAX pitfall (not 5)
  np.testing.assert_allclose(got, torch_ceil_average_pool(x, 2), rtol=1e-6, atol=1e-6)
  if size == 11:  # the last window holds one valid cell: its value, not a quarter of it
    np.testing.assert_allclose(got[:, -1, :, :], torch_ceil_average_pool(x, 2)[:, -1], rtol=1e-6)


def test_deep_stem_and_average_projection_modules():
  variables = abstract_variables(create_model("resnet50d"), (1, 64, 64, 3))["params"]
  shapes = {name: variables[name]["kernel"].shape for name in ("stem_conv1", "stem_conv2", "stem_conv3")}
  assert shapes == {"stem_conv1": (3, 3, 3, 32), "stem_conv2": (3, 3, 32, 32), "stem_conv3": (3, 3, 32, 64)}
  assert set(variables["stem_bn1"]) == {"scale", "bias"} and variables["stem_bn"]["scale"].shape == (64,)
  # ResNet-D's projection is a stride-1 1x1 conv after the pool: the same variables as ResNet-B's.
  b_variables = abstract_variables(create_model("resnet50"), (1, 64, 64, 3))["params"]
  assert variables["stage2_unit1"]["proj_conv"]["kernel"].shape == b_variables["stage2_unit1"]["proj_conv"][
      "kernel"].shape
  s = abstract_variables(create_model("resnet50s"), (1, 64, 64, 3))["params"]
  assert s["stem_conv2"]["kernel"].shape == (3, 3, 64, 64) and s["stem_conv3"]["kernel"].shape == (3, 3, 64, 128)


def _tiny_d(**options):
  return create_model("resnet50d", stage_sizes=(1, 3, 1, 1), stage_widths=(4, 8, 8, 8), stem_width=4, **options)


def test_average_projection_is_pool_then_unit_stride_conv():
  # A unit's projection output equals pool -> 1x1 conv -> BN written out, at an odd size (11x11 into stage 4).
  model = _tiny_d(features_only=True)
  # 176 px: stage 4's input is 11x11 (ceil mode: 6x6 after the pool, timm's layer4 at 176 px).
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 176, 176, 3)), jnp.float32)
  variables = random_variables(model, x.shape)
  maps, state = model.apply(variables, x, capture_intermediates=True)
  assert [m.shape[1] for m in maps] == [88, 44, 22, 11, 6]
  stage3 = np.asarray(maps[3])
  unit = variables["params"]["stage4_unit1"]
  stats = variables["batch_stats"]["stage4_unit1"]["proj_bn"]
  pooled = torch_ceil_average_pool(stage3, 2)
  projected = pooled @ np.asarray(unit["proj_conv"]["kernel"])[0, 0]
  expected = ((projected - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * unit["proj_bn"]["scale"]
              + unit["proj_bn"]["bias"])
  got = state["intermediates"]["stage4_unit1"]["proj_bn"]["__call__"][0]
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


def _jitted(model, **options):
  """model.apply compiled whole: one XLA program per variant costs less than running each op eagerly."""
  return jax.jit(functools.partial(model.apply, **options))


def test_tweaks_work_with_scan_bf16_ghost_bn_and_lesions():
  model = _tiny_d()
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 40, 40, 3)), jnp.float32)
  variables = random_variables(model, x.shape)
  logits = _jitted(model)(variables, x)
  scanned = _tiny_d(scan_units=True)
  np.testing.assert_allclose(_jitted(scanned)(scan_variables(variables, scanned), x), logits, rtol=2e-5, atol=2e-5)
  half = _jitted(_tiny_d(dtype="bfloat16"))(variables, x)
  assert half.dtype == jnp.float32 and float(jnp.max(jnp.abs(half - logits))) < 0.1 * float(jnp.max(jnp.abs(logits)))
  # Ghost BN in training: statistics per 2 examples = two separate calls of 2.
  together, _ = _jitted(_tiny_d(bn_group_size=2), train=True, mutable=["batch_stats"])(variables, x)
  train = _jitted(model, train=True, mutable=["batch_stats"])
  halves = [train(variables, x[i:i + 2])[0] for i in (0, 2)]
  np.testing.assert_allclose(together, jnp.concatenate(halves), rtol=2e-5, atol=2e-5)
  # Lesions (Veit et al. 2016) reach the units after the deep stem: runtime gates = static lesions.
  gates = np.ones(model.num_units, np.float32)
  gates[2] = 0.0
  lesioned = _jitted(model)(variables, x, branch_gates=gates)
  np.testing.assert_allclose(lesioned, _jitted(_tiny_d(lesioned_units=(2,)))(variables, x), rtol=1e-6, atol=1e-6)
  assert not np.allclose(lesioned, logits)


def test_export_refuses_the_tweaks_it_does_not_build():
  # resnet_jax.export's graph has no deep stem or ResNet-D pool: one clear error before anything is traced.
  for model in (_tiny_d(), create_model("resnet50", downsample="avg")):
    with pytest.raises(UserError, match="export does not build the deep stem or the average-pool projection"):
      export.inference_graph(model, {"params": {}, "batch_stats": {}})
