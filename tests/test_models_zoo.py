"""Every registry name: exact parameter count (from jax.eval_shape, no compute) and a forward pass.

Speed (the suite runs on 2 CPU cores): one `jax.eval_shape` of `model.init` per name gives both the count and the
shapes of the variables, which `fill_variables` fills with NumPy (no PRNG compilation). Residual nets run
op-by-op: JAX caches each primitive's compilation, so nets of the same widths share them (ResNet-101 after
ResNet-50 costs little). Compile-bound nets are jitted on a background thread (XLA compiles without holding the
GIL) while the others run on the main thread: DenseNets, whose layers all differ in shape, and the 1000-unit
nets, which run with scan_units=True (one compiled unit per stage). CIFAR nets run on 8x8 inputs (the
smallest size they support), ImageNet nets on 32x32 (every stage >= 1x1).
"""

import math
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import fill_variables, random_variables
from resnet_jax.models import count_params, create_model, list_models
from resnet_jax.models.counting import abstract_variables

# Trainable parameters (BatchNorm running statistics excluded).
#  [TV]   torchvision 0.28 `sum(p.numel())`.            [P]  the paper's table (rounded), exact count computed.
#  [DER]  derived here from a sourced count (see the option A / B / C tests below).
#  [TIMM] timm 1.0.31 `sum(p.numel() for p in timm.create_model(name).parameters())`, computed once with torch.
EXPECTED = {
    # ImageNet, torchvision layout [TV]; resnext101_32x4d and resnet-200 variants are not in torchvision.
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240,
    "resnext101_32x4d": 44_177_704,  # [P] Xie et al. 2017 (~44M); exact count computed in PyTorch
    # "Bag of Tricks" ResNet-C/D (He et al. 2019 §4.2) under timm's names [TIMM]
    "resnet18d": 11_708_744, "resnet26d": 16_014_408, "resnet34d": 21_816_904, "resnet50d": 25_576_264,
    "resnet101d": 44_568_392, "resnet152d": 60_212_040, "resnet50c": 25_576_264, "resnet50s": 25_680_808,
    # CIFAR option A [P] He et al. 2015 Table 6 (0.27M ... 19.4M)
    "cifar_resnet20": 269_722, "cifar_resnet32": 464_154, "cifar_resnet44": 658_586, "cifar_resnet56": 853_018,
    "cifar_resnet110": 1_727_962, "cifar_resnet1202": 19_421_274,
    # 9n+2 pre-activation bottlenecks [P] He et al. 2016 (1.7M, 10.2M w/o BN)
    "cifar_preact_resnet164": 1_703_258, "cifar_preact_resnet1001": 10_327_706,
    # ResNeXt-29 [P] Xie et al. 2017 Table 7 (34.4M, 68.1M); DenseNet-BC [P] Huang et al. 2017 Table 2
    "resnext29_8x64d": 34_426_698, "resnext29_16x64d": 68_155_210,
    "densenet_bc_100_12": 769_162, "densenet_bc_190_40": 25_624_430, "densenet_bc_250_24": 15_324_406,
    # [DER] plain nets = option-A nets: shortcut A has no parameters (He et al. 2015: "exactly the same number")
    "cifar_plain20": 269_722, "cifar_plain32": 464_154, "cifar_plain44": 658_586, "cifar_plain56": 853_018,
    "cifar_plain110": 1_727_962,
    "plain18": 11_689_512 - 173_824, "plain34": 21_797_672 - 173_824,  # minus the 3 projections (see below)
    # [DER] full pre-activation 6n+2: no stem BN (-32), final BN (+128), first BN of the 2nd/3rd stage's first unit
    # on 16/32 instead of 32/64 channels (-32, -64): the same total as the original units.
    "cifar_preact_resnet20": 269_722, "cifar_preact_resnet32": 464_154, "cifar_preact_resnet44": 658_586,
    "cifar_preact_resnet56": 853_018, "cifar_preact_resnet110": 1_727_962,
    # [DER] original (post-activation) 9n+2 bottlenecks vs the pre-activation counts: BN after the 3 projections
    # (+2*(64+128+256)), post-conv BN on c_out instead of pre-conv BN on c_in in the 3 transition units
    # (+2*(48+64+128)), stem BN (+32), no final BN (-512).
    "cifar_resnet164": 1_703_258 + 896 + 480 + 32 - 512, "cifar_resnet1001": 10_327_706 + 896 + 480 + 32 - 512,
    # [DER] ResNet-200 = ResNet-152 + 16 bottlenecks [1x1,128; 3x3,128; 1x1,512] on the 28x28 stage (He et al. 2016
    # §4.2), each 512*128 + 9*128*128 + 128*512 + 2*(128+128+512) = 280,064.
    "resnet200": 60_192_808 + 16 * 280_064,
    # [DER] full pre-activation (fb.resnet.torch preresnet): no BN on the 4 projections (-2*(256+512+1024+2048)),
    # the first unit has no pre-activation (-2*256 vs the original's conv3 BN), pre-conv BN on c_in in the other
    # 3 transition units (-2*(256+512+1024)), final BN (+2*2048): -7,680 in all.
    "preact_resnet152": 60_192_808 - 7_680, "preact_resnet200": 60_192_808 + 16 * 280_064 - 7_680,
}

# The 1000-unit nets run and are counted in their scanned layout (the same parameters, stacked along a unit axis):
# tracing 1000 unrolled units costs seconds and says nothing more. test_models_params checks scan == unrolled
# counts; test_models_invariants checks scan == unrolled numerics.
SCANNED = {"cifar_resnet1202", "cifar_preact_resnet1001", "cifar_resnet1001"}


def test_every_registry_name_has_an_expected_count():
  assert set(list_models()) == set(EXPECTED)


# Compile-bound nets run jitted on a background thread (see the module docstring); the rest op-by-op.
BACKGROUND = sorted(SCANNED) + [n for n in list_models() if n.startswith("densenet")]
EAGER = [n for n in list_models() if n not in BACKGROUND]


def _count(shapes):
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes["params"]))


def _model_and_input(name):
  model = create_model(name, scan_units=True) if name in SCANNED else create_model(name)
  shape = (1, 32, 32, 3) if model.num_classes == 1000 else (1, 8, 8, 3)
  return model, jnp.asarray(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))


def _check(name, model, shapes, logits):
  assert set(shapes) == {"params", "batch_stats"}
  assert _count(shapes) == EXPECTED[name]
  assert logits.shape == (1, model.num_classes) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def _jitted_run(name):
  model, x = _model_and_input(name)
  shapes = abstract_variables(model, x.shape)
  return model, shapes, jax.jit(model.apply)(fill_variables(shapes), x)


@pytest.fixture(scope="module", autouse=True)
def background_runs():
  pool = ThreadPoolExecutor(1)
  yield {name: pool.submit(_jitted_run, name) for name in BACKGROUND}
  pool.shutdown(wait=True, cancel_futures=True)  # a run that selected none of them skips what has not started


@pytest.mark.parametrize("name", EAGER)
def test_registry_model_count_and_forward(name):
  model, x = _model_and_input(name)
  shapes = abstract_variables(model, x.shape)
  _check(name, model, shapes, model.apply(fill_variables(shapes), x))


@pytest.mark.parametrize("name", BACKGROUND)
def test_compile_bound_registry_model_count_and_forward(name, background_runs):
  _check(name, *background_runs[name].result())


def test_quickstart_model_on_8x8_grey_digits():
  # The quickstart trains cifar_preact_resnet20 on 8x8x1 digits: a training step and an eval step.
  model = create_model("cifar_preact_resnet20")
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 1), dtype=np.float32))
  variables = random_variables(model, x.shape)  # model.init itself: test_models_invariants
  assert variables["params"]["stem_conv"]["kernel"].shape == (3, 3, 1, 16)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert set(variables) == {"params", "batch_stats"}
  assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
      variables["batch_stats"])
  assert model.apply({"params": variables["params"], **updates}, x).shape == (4, 10)


@pytest.mark.parametrize("hw", [(8, 8), (9, 13), (12, 12)])
def test_cifar_nets_take_any_size_and_channels(hw):
  for name in ("cifar_resnet20", "cifar_preact_resnet20"):
    model = create_model(name, stage_sizes=(1, 1, 1))
    shape = (2,) + hw + (5,)
    out = model.apply(random_variables(model, shape), jnp.ones(shape))
    assert out.shape == (2, 10)


def all_eqns(jaxpr):
  """The equations of a jaxpr and of every sub-jaxpr (custom VJPs, scans, conds)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from all_eqns(inner)


def test_bfloat16_compute_float32_logits_and_statistics():
  model = create_model("cifar_resnet20", stage_sizes=(1, 1, 1), dtype="bfloat16")
  x = jnp.ones((2, 8, 8, 3))
  variables = random_variables(model, x.shape)
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(variables))
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(updates))
  # Compute really is bfloat16: every convolution outputs bfloat16 (1x1 ones are matrix products on CPU).
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x)
  convs = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
  assert convs and all(e.outvars[0].aval.dtype == jnp.bfloat16 for e in convs)
  f32 = create_model("cifar_resnet20", stage_sizes=(1, 1, 1))
  np.testing.assert_allclose(logits, f32.apply(variables, x, train=True, mutable=["batch_stats"])[0],
                             rtol=0.1, atol=0.1)
  assert count_params(model) == count_params(f32)


def test_densenet_matches_a_concatenating_reference():
  # Huang et al. 2017 §3 written out with concatenation: stem conv; per block, layers BN-ReLU-1x1 (4k)-BN-ReLU-3x3
  # (k) whose outputs are concatenated; transitions BN-ReLU-1x1 (floor(theta * c))-2x2 average pool; BN-ReLU,
  # global pool, FC.
  model = create_model("densenet_bc_100_12", depth=16, growth_rate=4)  # 2 layers per block (depth 4 + 6 * 2)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 3), dtype=np.float32))
  variables = random_variables(model, x.shape)
  p, s = variables["params"], variables["batch_stats"]
  bn = lambda h, n: jax.nn.relu((h - s[n]["mean"]) / jnp.sqrt(s[n]["var"] + 1e-5) * p[n]["scale"] + p[n]["bias"])
  conv = lambda h, n: jax.lax.conv_general_dilated(
      h, p[n]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = conv(x, "stem_conv")
  assert h.shape[-1] == 8  # 2k
  for b in (1, 2, 3):
    for i in (1, 2):
      y = conv(bn(h, f"block{b}_layer{i}_bn1"), f"block{b}_layer{i}_conv1")
      h = jnp.concatenate([h, conv(bn(y, f"block{b}_layer{i}_bn2"), f"block{b}_layer{i}_conv2")], axis=-1)
    if b < 3:
      h = conv(bn(h, f"transition{b}_bn"), f"transition{b}_conv")
      if b == 1:
        assert h.shape[-1] == 8  # floor(0.5 * (2k + 2 layers * k)) with k = 4
      h = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
  want = bn(h, "final_bn").mean((1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(jax.jit(model.apply)(variables, x), want, rtol=1e-5, atol=1e-5)
