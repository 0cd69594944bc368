"""Invariants of the zoo on tiny networks: shortcut paths, stochastic depth, scan == unrolled, every activation
order and shortcut variant forward + backward, ghost BatchNorm, gates, initialisation.

Networks are CIFAR-style with few, narrow units (8x8 inputs), and run op-by-op where that is cheaper than a
compilation; the same widths everywhere let JAX reuse its per-primitive compilations between tests. The
scan == unrolled comparison needs three jitted gradient compilations: they run on a background thread (XLA
compiles without holding the GIL) while the other tests run.
"""

from concurrent.futures import ThreadPoolExecutor
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from model_helpers import random_variables
from resnet_jax.errors import UserError
from resnet_jax.models import (BatchNorm, count_params, create_model, describe_units, scan_variables,
                               unscan_variables)
from resnet_jax.models import units
from resnet_jax.models.layers import batch_norm_train, batch_norm_train_reference, survival_probabilities

WIDTHS = (4, 8, 16)
X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 3), dtype=np.float32))
Y = jnp.array([1, 2, 3, 4])


def tiny(name="cifar_resnet20", stage_sizes=(2, 1, 1), **kw):
  return create_model(name, stage_sizes=stage_sizes, stage_widths=WIDTHS, **kw)


def tree_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree_util.tree_map(lambda p, q: np.testing.assert_allclose(p, q, rtol=rtol, atol=atol), a, b)


def loss_and_grads(model, variables, x=X, y=Y, rng=None, **kw):
  # 'rbg' keys: same semantics, but XLA:CPU compiles their bit generator much faster than threefry's.
  rng = jax.random.key(7, impl="rbg") if rng is None else rng
  def loss(params):
    logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": rng}, **kw)
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), (logits, updates)
  (l, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
  return l, logits, updates, grads


# --------------------------------------------------------------------------------------------- shortcut path


def _bn(h, p, s, train):
  if train:
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
  else:
    mean, var = s["mean"], s["var"]
  return (h - mean) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _conv(h, kernel, stride):
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(h, kernel, (stride, stride), [(pad, pad)] * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("name", ["cifar_preact_resnet20", "cifar_preact_resnet164"])
def test_preact_net_with_zero_branches_is_its_shortcut_path(name):
  # He et al. 2016 §3: with full pre-activation units and identity shortcuts the signal propagates directly
  # from any unit to any other. Zero the last conv of every branch: the output must be stem -> shortcut path
  # (the shared BN-ReLU and option A / projection of shape-changing units) -> final BN-ReLU -> head.
  model = tiny(name, stage_sizes=(2, 2, 2))
  variables = random_variables(model, X.shape)
  params, stats = variables["params"], variables["batch_stats"]
  last = "conv2" if name == "cifar_preact_resnet20" else "conv3"
  params = {k: ({**v, last: {"kernel": jnp.zeros_like(v[last]["kernel"])}} if last in v else v)
            for k, v in params.items()}
  for train in (False, True):
    got = model.apply({"params": params, "batch_stats": stats}, X, train=train, mutable=["batch_stats"])[0]
    h = _conv(X, params["stem_conv"]["kernel"], 1)
    for u in describe_units(model):
      p, s = params[f"stage{u.stage}_unit{u.position}"], stats.get(f"stage{u.stage}_unit{u.position}")
      if u.preact == "shared":
        h = jax.nn.relu(_bn(h, p["bn1"], s["bn1"], train))
      if "proj_conv" in p:  # resnet-1k-layers: bare 1x1 conv projection on the pre-activated input
        h = _conv(h, p["proj_conv"]["kernel"], u.stride)
      elif u.changes_shape:  # option A
        h = jnp.pad(h[:, ::u.stride, ::u.stride], ((0, 0), (0, 0), (0, 0), (0, u.out_features - h.shape[-1])))
    h = jax.nn.relu(_bn(h, params["final_bn"], stats["final_bn"], train))
    want = h.mean((1, 2)) @ params["head"]["kernel"] + params["head"]["bias"]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  if name == "cifar_preact_resnet164":
    assert all(f"stage{s}_unit1" in params and "proj_conv" in params[f"stage{s}_unit1"] for s in (1, 2, 3))


# --------------------------------------------------------------------------------------------- stochastic depth


def test_survival_probabilities_follow_the_linear_rule():
  p = survival_probabilities(54, 0.5)  # Huang et al. 2016 Eq. 4, the 110-layer net's 54 units
  np.testing.assert_allclose(p, 1 - np.arange(1, 55) / 54 * 0.5, rtol=1e-6)
  assert p[-1] == pytest.approx(0.5) and p[0] == pytest.approx(1 - 0.5 / 54)
  assert np.all(survival_probabilities(10, 1.0) == 1)


def test_stochastic_depth_with_p_last_one_is_the_deterministic_model():
  # p_L = 1: every p_l = 1, so training (with a 'dropout' RNG, logits and BatchNorm updates) and evaluation are
  # exactly the deterministic network's, in both modes.
  base = tiny()
  variables = random_variables(base, X.shape)
  train = lambda m: m.apply(variables, X, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
  want_train, want_eval = train(base), base.apply(variables, X)
  for mode in ("batch", "example"):
    model = tiny(survival_prob_last=1.0, stochastic_depth_mode=mode)
    tree_close(train(model), want_train, rtol=0, atol=0)
    np.testing.assert_array_equal(model.apply(variables, X), want_eval)


def test_stochastic_depth_scales_branches_by_p_l_at_test_time():
  model = tiny(survival_prob_last=0.5)
  variables = random_variables(model, X.shape)
  p = survival_probabilities(4, 0.5)
  np.testing.assert_allclose(model.apply(variables, X), tiny().apply(variables, X, branch_gates=p),
                             rtol=1e-6, atol=1e-6)


def test_stochastic_depth_training_is_random_reproducible_and_per_batch_or_per_example():
  x = jnp.broadcast_to(X[:1], X.shape)  # copies of one image
  outs = {}
  for mode in ("batch", "example"):
    model = tiny(survival_prob_last=0.5, stochastic_depth_mode=mode)
    variables = random_variables(model, x.shape)
    run = lambda seed: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": jax.random.key(seed)})[0]
    outs[mode] = [run(seed) for seed in range(4)]
    np.testing.assert_array_equal(run(0), outs[mode][0])  # same key, same masks
    assert any(not np.allclose(outs[mode][0], o) for o in outs[mode][1:])  # masks change with the key
  # 'batch': one mask per mini-batch, so identical images give identical logits; 'example': they differ.
  assert all(np.allclose(o, o[:1]) for o in outs["batch"])
  assert any(not np.allclose(o, o[:1]) for o in outs["example"])
  with pytest.raises(UserError, match="dropout"):
    tiny(survival_prob_last=0.5).apply(random_variables(tiny(), X.shape), X, train=True, mutable=["batch_stats"])


# --------------------------------------------------------------------------------------------- scan == unrolled


# The config covers what scanning must carry per unit: different parameters, BatchNorm statistics,
# stochastic-depth masks (drawn once per call, per example here) and runtime gates, over two scanned stages of
# pre-activation units.
SCAN_CONFIG = dict(stage_sizes=(1, 3, 2), stage_widths=WIDTHS, survival_prob_last=0.5,
                   stochastic_depth_mode="example")
SCAN_MODEL = "cifar_preact_resnet20"


@pytest.fixture(scope="module", autouse=True)
def background():
  """Jitted work (scan == unrolled gradients, remat) on a background thread: XLA compiles without holding the
  GIL, so on 2 cores it overlaps with the op-by-op tests on the main thread."""
  pool = ThreadPoolExecutor(1)
  yield {"scan": pool.submit(_scan_runs), "remat": pool.submit(_remat_runs)}
  pool.shutdown(wait=True, cancel_futures=True)  # a run that selected none of these tests skips what has not started


def _scan_runs():
  unrolled = create_model(SCAN_MODEL, **SCAN_CONFIG)
  variables = random_variables(unrolled, X.shape)
  gates = jnp.asarray(np.linspace(0, 1, unrolled.num_units, dtype=np.float32))
  run = lambda model, v: jax.jit(lambda v: loss_and_grads(model, v, branch_gates=gates))(v)
  out = {"unrolled": (unrolled, variables, run(unrolled, variables))}
  for remat in (False, True):
    scanned = create_model(SCAN_MODEL, scan_units=True, remat=remat, **SCAN_CONFIG)
    scanned_vars = scan_variables(variables, unrolled)
    out[remat] = (scanned, scanned_vars, run(scanned, scanned_vars))
  return out


@pytest.mark.parametrize("remat", [False, True])
def test_scan_equals_unrolled_forward_and_gradients(background, remat):
  runs = background["scan"].result()
  unrolled, variables, (l_u, logits_u, updates_u, grads_u) = runs["unrolled"]
  scanned, scanned_vars, (l_s, logits_s, updates_s, grads_s) = runs[remat]
  # The layouts convert both ways and match what the scanned model creates.
  assert jax.tree_util.tree_structure(scanned_vars) == jax.tree_util.tree_structure(
      jax.eval_shape(lambda: scanned.init(jax.random.key(0), X)))
  tree_close(unscan_variables(scanned_vars, unrolled), variables, rtol=0, atol=0)
  np.testing.assert_allclose(l_s, l_u, rtol=1e-6)
  np.testing.assert_allclose(logits_s, logits_u, rtol=1e-5, atol=1e-6)
  tree_close(unscan_variables({"params": grads_s}, unrolled)["params"], grads_u)
  tree_close(unscan_variables(updates_s, unrolled), updates_u)


def test_scan_equals_unrolled_in_evaluation():
  unrolled, scanned = tiny(stage_sizes=(3, 2, 1)), tiny(stage_sizes=(3, 2, 1), scan_units=True)
  variables = random_variables(unrolled, X.shape)
  np.testing.assert_allclose(scanned.apply(scan_variables(variables, unrolled), X), unrolled.apply(variables, X),
                             rtol=1e-5, atol=1e-6)


def _remat_runs():
  model = tiny(stage_sizes=(1, 2, 1))
  variables = random_variables(model, X.shape)
  return [jax.jit(lambda v, m=m: loss_and_grads(m, v))(variables) for m in (model, model.clone(remat=True))]


def test_remat_unrolled_does_not_change_gradients(background):
  plain, remat = background["remat"].result()
  tree_close(remat, plain)


# --------------------------------------------------------------------------------------------- all variants run

# Each activation order (He et al. 2016 Fig. 4 (a)-(e)), unit kind, shortcut variant (He et al. 2016 Table 1 /
# Fig. 2) and shortcut type (He et al. 2015 A/B/C) appears at least once; combined to keep the suite short.
VARIANTS = [
    dict(unit_order="original", block="basic", shortcut="exclusive_gate"),
    dict(unit_order="bn_after_add", block="basic", shortcut="scaling", shortcut_scale=0.5, scale_residual=True),
    dict(unit_order="relu_before_add", block="single", shortcut="shortcut_gate", gate_bias_init=0.0),
    dict(unit_order="relu_preact", block="basic", shortcut="dropout", shortcut_dropout_rate=0.5),
    dict(unit_order="full_preact", block="single", shortcut="conv1x1"),
    dict(unit_order="full_preact", block="basic", shortcut_type="B"),
    dict(unit_order="original", block="single", shortcut="none"),
    dict(name="cifar_resnet164", unit_order="bn_after_add", shortcut_type="C", stride_on="3x3", cardinality=2,
         base_width=32),
    dict(name="cifar_preact_resnet164", unit_order="relu_preact", shortcut_type="A", shortcut="exclusive_gate"),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_every_order_and_shortcut_variant_runs_forward_and_backward(overrides):
  # Op-by-op: the variants share most primitives (same widths), so JAX's per-primitive cache makes this
  # cheaper than one compilation per variant.
  overrides = dict(overrides)
  model = tiny(overrides.pop("name", "cifar_resnet20"), stage_sizes=(2, 1, 1), **overrides)
  variables = random_variables(model, X.shape)
  l, logits, updates, grads = loss_and_grads(model, variables)
  assert logits.shape == (4, 10) and np.isfinite(float(l))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"
  assert set(updates) == {"batch_stats"}
  eval_logits = model.apply(variables, X)
  assert eval_logits.shape == (4, 10) and np.all(np.isfinite(eval_logits))


def test_shortcut_variants_reduce_to_their_special_cases():
  base = tiny()
  variables = random_variables(base, X.shape)
  want = base.apply(variables, X)
  zero_gates = jnp.zeros((base.num_units,))
  # Dropout shortcut at test time and scaling with lambda = 1 are the identity shortcut.
  np.testing.assert_allclose(tiny(shortcut="dropout").apply(variables, X), want, rtol=1e-6)
  np.testing.assert_allclose(tiny(shortcut="scaling", shortcut_scale=1.0).apply(variables, X), want, rtol=1e-6)
  # A closed gate (b_g -> -inf: g = 0): exclusive gating passes only the shortcut, shortcut-only gating all.
  for variant, gates in (("exclusive_gate", zero_gates), ("shortcut_gate", None)):
    gated = tiny(shortcut=variant)
    gv = random_variables(gated, X.shape)
    gv = {"params": {k: ({**v, "gate": {**v["gate"], "bias": jnp.full_like(v["gate"]["bias"], -100.0)}}
                         if "gate" in v else v) for k, v in gv["params"].items()}, "batch_stats": gv["batch_stats"]}
    plain_vars = {"params": {k: {n: w for n, w in v.items() if n != "gate"} if isinstance(v, dict) else v
                             for k, v in gv["params"].items()}, "batch_stats": gv["batch_stats"]}
    np.testing.assert_allclose(gated.apply(gv, X), base.apply(plain_vars, X, branch_gates=gates), rtol=1e-5,
                               atol=1e-6)
  # The 1x1-conv shortcut (Table 1) is option C (He et al. 2015).
  c = tiny(shortcut_type="C")
  cv = random_variables(c, X.shape)
  np.testing.assert_allclose(tiny(shortcut="conv1x1").apply(cv, X), c.apply(cv, X), rtol=1e-6)


# --------------------------------------------------------------------------------------------- BatchNorm


def test_bn_global_and_one_group_equal_flax_batchnorm():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 3, 3, 5), dtype=np.float32) * 3 + 1)
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  ref_vars = ref.init(jax.random.key(0), x)
  want, want_stats = ref.apply(ref_vars, x, mutable=["batch_stats"])
  for group in (None, 6):
    bn = BatchNorm(group_size=group)
    got, got_stats = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    tree_close(got_stats, want_stats)


def test_ghost_bn_uses_per_group_statistics():
  rs = np.random.default_rng(2)
  x = rs.standard_normal((6, 2, 3, 4)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None, None, None]
  bn = BatchNorm(group_size=2, momentum=0.8, epsilon=1e-3)
  variables = bn.init(jax.random.key(0), x)
  variables = {"params": {"scale": jnp.asarray(rs.uniform(0.5, 2, 4), jnp.float32),
                          "bias": jnp.asarray(rs.standard_normal(4), jnp.float32)},
               "batch_stats": {"mean": jnp.full((4,), 0.5), "var": jnp.full((4,), 2.0)}}
  got, stats = bn.apply(variables, x, mutable=["batch_stats"])
  groups = x.reshape(3, 2, 2, 3, 4).astype(np.float64)
  mean = groups.mean(axis=(1, 2, 3), keepdims=True)
  var = groups.var(axis=(1, 2, 3), keepdims=True)
  want = ((groups - mean) / np.sqrt(var + 1e-3)).reshape(x.shape) * variables["params"]["scale"] + \
      variables["params"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["batch_stats"]["mean"], 0.8 * 0.5 + 0.2 * mean.mean(axis=0).ravel(), rtol=1e-5)
  np.testing.assert_allclose(stats["batch_stats"]["var"], 0.8 * 2.0 + 0.2 * var.mean(axis=0).ravel(), rtol=1e-5)
  # Evaluation uses the running averages, whatever the group size.
  ev = BatchNorm(use_running_average=True, group_size=2, epsilon=1e-3).apply(variables, x)
  np.testing.assert_allclose(ev, (x - 0.5) / np.sqrt(2.0 + 1e-3) * variables["params"]["scale"] +
                             variables["params"]["bias"], rtol=1e-5, atol=1e-5)


def test_ghost_bn_model_equals_separate_calls_per_group():
  # Ghost BN with G examples per group is the papers' per-GPU BN: the same as running each group alone, with
  # the running averages averaged over the groups.
  ghost, whole = tiny(bn_group_size=2), tiny()
  variables = random_variables(whole, X.shape)
  got, got_stats = ghost.apply(variables, X, train=True, mutable=["batch_stats"])
  halves = [whole.apply(variables, X[i:i + 2], train=True, mutable=["batch_stats"]) for i in (0, 2)]
  np.testing.assert_allclose(got, jnp.concatenate([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
  tree_close(got_stats, jax.tree_util.tree_map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1]))
  same, _ = tiny(bn_group_size=4).apply(variables, X, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(same, whole.apply(variables, X, train=True, mutable=["batch_stats"])[0], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("group_size", [None, 2, 4])
def test_bn_of_a_batch_sharded_over_devices_matches_per_group_statistics_computed_on_the_host(group_size):
  # The batch is split over 2 devices (conftest): global BN (None) must still use the statistics of the whole
  # batch, ghost BN those of each group of `group_size` consecutive examples, whichever device holds them.
  assert len(jax.devices()) >= 2
  mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
  rs = np.random.default_rng(5)
  x = rs.standard_normal((8, 3, 3, 4)) * rs.uniform(0.5, 3, 4) + rs.uniform(-2, 2, 4)
  bn = BatchNorm(group_size=group_size, momentum=0.0, epsilon=1e-3)
  variables = bn.init(jax.random.key(0), jnp.zeros(x.shape, jnp.float32))
  fn = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]))
  y, stats = fn(variables, jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, PartitionSpec("data"))))
  groups = x.reshape(8 // (group_size or 8), group_size or 8, 3, 3, 4)
  mean, var = groups.mean(axis=(1, 2, 3), keepdims=True), groups.var(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(y, ((groups - mean) / np.sqrt(var + 1e-3)).reshape(x.shape), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(stats["batch_stats"]["var"], var.mean(axis=0).ravel(), rtol=1e-4)
  np.testing.assert_allclose(stats["batch_stats"]["mean"], mean.mean(axis=0).ravel(), rtol=1e-4, atol=1e-5)


def test_fast_kernels_equal_the_reference_kernels_in_values_and_gradients():
  # layers.KERNELS is the one seam between the hand-written CPU convolution / BatchNorm gradient and plain
  # lax / autodiff: a whole network must give the same logits, statistics and gradients either way.
  for options in (dict(), dict(block="bottleneck", cardinality=2, base_width=32, unit_order="full_preact")):
    fast = tiny(**options)
    variables = random_variables(fast, X.shape)
    got = loss_and_grads(fast, variables)
    want = loss_and_grads(fast.clone(kernels="reference"), variables)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
      np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)
  with pytest.raises(UserError, match="kernels"):
    tiny(kernels="fastest").apply(variables, X)


def test_a_new_activation_order_is_one_entry_of_the_table(monkeypatch):
  # He et al. 2016 Fig. 4's orders are data (units.ORDERS): an order added there is trained with no other
  # change. Here "BN after addition" without the ReLU: conv-BN-ReLU-conv, add, BN.
  monkeypatch.setitem(units.ORDERS, "bn_only_after_add", units.ActivationOrder(
      "b'", preactivation="none", after_conv="bn_relu", after_last_conv="none", after_addition="bn",
      after_stem="bn_relu", after_last_unit="none"))
  model = tiny(unit_order="bn_only_after_add")
  variables = random_variables(model, X.shape)
  assert set(variables["params"]["stage1_unit1"]) == {"conv1", "bn1", "conv2", "bn_out"}
  out = model.apply(variables, X)
  assert np.all(np.isfinite(out)) and float(jnp.min(out)) < 0
  assert count_params(model) == count_params(tiny(unit_order="bn_after_add"))


# --------------------------------------------------------------------------------------------- gates


def test_gates_all_one_equal_the_plain_forward_and_static_lesions_equal_runtime_ones():
  model = tiny()
  variables = random_variables(model, X.shape)
  plain = model.apply(variables, X)
  np.testing.assert_array_equal(model.apply(variables, X, branch_gates=jnp.ones((4,))), plain)
  np.testing.assert_array_equal(
      model.apply(variables, X, branch_grad_gates=jnp.zeros((4,)), shortcut_grad_gates=jnp.zeros((4,))), plain)
  np.testing.assert_array_equal(tiny(lesioned_units=(1, 3)).apply(variables, X),
                                model.apply(variables, X, branch_gates=jnp.array([1.0, 0.0, 1.0, 0.0])))
  assert not np.allclose(model.apply(variables, X, branch_gates=jnp.array([1.0, 0.0, 1.0, 1.0])), plain)


def test_branch_grad_gate_blocks_gradient_into_that_branch_only():
  model = tiny()
  variables = random_variables(model, X.shape)
  _, logits, _, grads = loss_and_grads(model, variables, branch_grad_gates=jnp.array([1.0, 0.0, 1.0, 1.0]))
  np.testing.assert_allclose(logits, loss_and_grads(model, variables)[1], rtol=1e-6)
  blocked = grads["stage1_unit2"]
  assert all(np.all(g == 0) for g in jax.tree_util.tree_leaves(blocked))
  assert all(np.any(g != 0) for g in jax.tree_util.tree_leaves(grads["stage1_unit1"]))
  assert np.any(grads["stem_conv"]["kernel"] != 0)


# --------------------------------------------------------------------------------------------- initialisation


def test_initialisation_and_zero_init_last_bn():
  key = jax.random.key(0, impl="rbg")  # the distribution is the point here, not the PRNG; rbg compiles faster
  model = create_model("cifar_resnet20", stage_sizes=(1, 1, 1), zero_init_last_bn=True)
  variables = jax.jit(lambda k: model.init(k, X))(key)
  p = variables["params"]
  k = p["stage3_unit1"]["conv2"]["kernel"]  # 3x3, 64 -> 64: He normal fan_out std sqrt(2 / (9 * 64))
  assert float(jnp.std(k)) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
  assert float(jnp.std(p["stem_conv"]["kernel"])) == pytest.approx(np.sqrt(2 / (9 * 16)), rel=0.25)
  assert float(jnp.max(jnp.abs(p["head"]["kernel"]))) <= 1 / 8 and float(jnp.std(p["head"]["bias"])) > 0
  assert np.all(p["stage1_unit1"]["bn1"]["scale"] == 1) and np.all(p["stage1_unit1"]["bn1"]["bias"] == 0)
  assert all(np.all(p[f"stage{s}_unit1"]["bn2"]["scale"] == 0) for s in (1, 2, 3))
  assert np.all(variables["batch_stats"]["stem_bn"]["var"] == 1)
  # Zero-initialised last BN: every unit starts as its shortcut.
  np.testing.assert_allclose(model.apply(variables, X), model.apply(variables, X, branch_gates=jnp.zeros(3)),
                             rtol=1e-6)
  # Branches ending in a conv (orders (b), (e)) zero that conv instead.
  pre = create_model("cifar_preact_resnet20", stage_sizes=(1, 1, 1), zero_init_last_bn=True)
  pv = jax.jit(lambda k: pre.init(k, X))(key)["params"]
  assert np.all(pv["stage2_unit1"]["conv2"]["kernel"] == 0) and np.any(pv["stage2_unit1"]["conv1"]["kernel"] != 0)
  assert count_params(pre) == count_params(create_model("cifar_preact_resnet20", stage_sizes=(1, 1, 1)))


@pytest.mark.parametrize("group,relu,offset", [(6, False, 0.0), (2, True, 0.0), (3, True, 40.0)])
def test_bn_hand_written_gradient_equals_autodiff(group, relu, offset):
  # layers.batch_norm_train's gradient is written out (two passes over the activations); it must equal autodiff
  # of the plain arithmetic for x, scale and bias, including the cotangents of the returned mean and variance
  # and the fused ReLU. offset: batch means far from 0, with the running mean (the shift) near them.
  rs = np.random.default_rng(group)
  x = jnp.asarray(rs.standard_normal((6, 3, 2, 5)) * rs.uniform(0.5, 3, 5) + offset, jnp.float32)
  scale = jnp.asarray(rs.uniform(0.5, 2, 5), jnp.float32)
  bias = jnp.asarray(rs.standard_normal(5), jnp.float32)
  shift = jnp.full((5,), offset - 0.5, jnp.float32)
  w_y, w_m, w_v = (jnp.asarray(rs.standard_normal(s), jnp.float32) for s in (x.shape, (6 // group, 5),
                                                                             (6 // group, 5)))

  def loss(fn, x, scale, bias):
    y, m, v = fn(x, scale, bias, shift, group, 1e-3, relu, jnp.float32)
    return jnp.sum(y * w_y) + jnp.sum(m * w_m) + jnp.sum(v * w_v)

  got = jax.grad(functools.partial(loss, batch_norm_train), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(functools.partial(loss, batch_norm_train_reference), argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4)
  for g, w in zip(batch_norm_train(x, scale, bias, shift, group, 1e-3, relu, jnp.float32),
                  batch_norm_train_reference(x, scale, bias, shift, group, 1e-3, relu, jnp.float32)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_bn_relu_is_relu_of_bn_in_training_and_evaluation():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3, 3, 6)), jnp.float32)
  for train in (True, False):
    bn, bn_relu = BatchNorm(use_running_average=not train), BatchNorm(use_running_average=not train, relu=True)
    rs = np.random.default_rng(4)
    variables = {"params": {"scale": jnp.asarray(rs.uniform(0.5, 2, 6), jnp.float32),
                            "bias": jnp.asarray(rs.standard_normal(6), jnp.float32)},
                 "batch_stats": {"mean": jnp.asarray(rs.standard_normal(6), jnp.float32),
                                 "var": jnp.asarray(rs.uniform(0.5, 2, 6), jnp.float32)}}
    plain = bn.apply(variables, x, mutable=["batch_stats"])[0]
    fused = bn_relu.apply(variables, x, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(fused, jax.nn.relu(plain), rtol=1e-6, atol=1e-6)

