"""Registry: names, defaults, option validation (UserError with what to do). Nothing here compiles."""

import re

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.errors import UserError
from resnet_jax.models import counting
from resnet_jax.models import registry
from resnet_jax.models import (DenseNet, ResNet, create_model, describe_units, list_models,
                               model_options, num_residual_units, parameter_groups)

REQUIRED = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200", "plain18", "plain34",
    "preact_resnet152", "preact_resnet200", "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d",
    "resnext101_64x4d", "wide_resnet50_2", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
    "cifar_resnet110", "cifar_resnet1202", "cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56",
    "cifar_plain110", "cifar_preact_resnet110", "cifar_preact_resnet164", "cifar_preact_resnet1001",
    "cifar_resnet164", "cifar_resnet1001", "resnext29_8x64d", "resnext29_16x64d", "densenet_bc_100_12",
    "densenet_bc_190_40", "densenet_bc_250_24",
    # small full pre-activation nets (the quickstart trains cifar_preact_resnet20)
    "cifar_preact_resnet20", "cifar_preact_resnet32", "cifar_preact_resnet44", "cifar_preact_resnet56",
    # "Bag of Tricks" ResNet-C/D under timm's names
    "resnet18d", "resnet26d", "resnet34d", "resnet50d", "resnet101d", "resnet152d", "resnet50c", "resnet50s",
}


def test_list_models_is_exactly_the_registry():
  assert set(list_models()) == REQUIRED
  assert list_models() == sorted(list_models())


def test_unknown_name_lists_close_matches():
  with pytest.raises(UserError, match="resnet50") as e:
    create_model("resnet_50")
  assert "list_models" in str(e.value)
  with pytest.raises(UserError, match="unknown model name"):
    create_model("vgg16")


def test_unknown_option_lists_valid_options():
  with pytest.raises(UserError, match="shortcut_type") as e:
    create_model("cifar_resnet20", shortcut_kind="A")
  assert "shortcut_kind" in str(e.value)
  with pytest.raises(UserError, match="growth_rate"):
    create_model("densenet_bc_100_12", unit_order="full_preact")
  assert "gate_bias_init" in model_options("cifar_resnet110")
  with pytest.raises(UserError, match="did you mean shortcut\\?"):
    create_model("cifar_resnet20", shortcutt="A")


@pytest.mark.parametrize("overrides", [
    dict(unit_order="preact"), dict(shortcut="gate"), dict(shortcut_type="D"), dict(stride_on="2x2"),
    dict(block="bottleneck"), dict(bn_group_size=0), dict(survival_prob_last=0.0), dict(survival_prob_last=1.5),
    dict(stochastic_depth_mode="layer"), dict(shortcut_dropout_rate=1.0), dict(lesioned_units=(99,)),
    dict(dtype="float33"), dict(stage_sizes=(1, 1)), dict(cardinality=4), dict(stem="deeep"), dict(stage_sizes=3),
    dict(stage_widths=("a", 2, 3)), dict(downsample="max"), dict(stem="deep", stage_widths=(1, 2, 4)),
])
def test_invalid_option_values_raise_user_error(overrides):
  with pytest.raises(UserError):
    create_model("cifar_resnet20", **overrides)


def test_unknown_stem_and_downsample_name_the_valid_ones():
  with pytest.raises(UserError, match=r"stem='dep' is not valid; choose one of \['imagenet', 'deep', 'cifar'\]"):
    create_model("resnet50d", stem="dep")
  with pytest.raises(UserError, match=r"downsample='average' is not valid; choose one of \['conv', 'avg'\]"):
    create_model("resnet50", downsample="average")


def test_invalid_densenet_depth():
  with pytest.raises(UserError, match="depth"):
    create_model("densenet_bc_100_12", depth=101)


def test_num_classes_defaults_and_override():
  assert create_model("cifar_resnet20").num_classes == 10
  assert create_model("densenet_bc_100_12").num_classes == 10
  assert create_model("resnext29_8x64d").num_classes == 10
  assert create_model("resnet50").num_classes == 1000
  assert create_model("cifar_resnet20", num_classes=100).num_classes == 100


def test_dtype_names_are_accepted():
  m = create_model("cifar_resnet20", dtype="bfloat16", param_dtype="float32")
  assert m.dtype == jnp.bfloat16 and m.param_dtype == jnp.float32


def test_family_defaults_follow_their_sources():
  r50 = create_model("resnet50")
  assert (r50.block, r50.stride_on, r50.shortcut_type, r50.stem) == ("bottleneck", "3x3", "B", "imagenet")
  c20 = create_model("cifar_resnet20")
  assert (c20.stage_sizes, c20.stage_widths, c20.shortcut_type) == ((3, 3, 3), (16, 32, 64), "A")
  p164 = create_model("cifar_preact_resnet164")
  assert (p164.stage_sizes, p164.stride_on, p164.unit_order) == ((18, 18, 18), "1x1", "full_preact")
  assert create_model("cifar_preact_resnet1001").stage_sizes == (111, 111, 111)
  assert create_model("resnet200").stage_sizes == (3, 24, 36, 3)
  assert create_model("plain34").shortcut == "none"
  x = create_model("resnext29_16x64d")
  assert (x.cardinality, x.base_width, x.unit_width(64), x.stem_features) == (16, 64, 1024, 64)
  assert create_model("resnext101_32x8d").unit_width(64) == 256
  assert create_model("wide_resnet50_2").unit_width(64) == 128
  d = create_model("resnet50d")  # timm: stem_width=32, stem_type='deep', avg_down=True; ResNet-B's stride
  assert (d.stem, d.stem_width, d.downsample, d.stride_on, d.stem_features) == ("deep", 32, "avg", "3x3", 64)
  c = create_model("resnet50c")
  assert (c.stem, c.downsample) == ("deep", "conv")
  assert create_model("resnet26d").stage_sizes == (2, 2, 2, 2) and create_model("resnet26d").block == "bottleneck"


def test_one_layer_units_keep_the_depth():
  # He et al. 2016 Table 3 "ResNet-110 (1-layer skip)": 108 one-conv units + stem + fc = 110 layers.
  m = create_model("cifar_resnet110", block="single")
  assert m.stage_sizes == (36, 36, 36) and num_residual_units(m) == 108
  with pytest.raises(UserError, match="9n"):
    create_model("cifar_resnet110", block="bottleneck")


def test_unit_description():
  units = describe_units(create_model("cifar_resnet20"))
  assert len(units) == 9 == num_residual_units(create_model("cifar_resnet20"))
  assert [u.index for u in units if u.changes_shape] == [3, 6]
  assert units[3].stage == 2 and units[3].position == 1 and units[3].stride == 2
  pre = describe_units(create_model("cifar_preact_resnet20"))
  assert [u.preact for u in pre[:4]] == ["shared", "branch", "branch", "shared"]
  assert describe_units(create_model("preact_resnet152"))[0].preact == "none"  # after the stem's BN-ReLU-pool
  assert num_residual_units(create_model("resnet50")) == 16


def test_densenet_has_no_residual_units():
  assert isinstance(create_model("densenet_bc_100_12"), DenseNet)
  assert isinstance(create_model("resnet18"), ResNet)
  with pytest.raises(UserError, match="residual units"):
    num_residual_units(create_model("densenet_bc_100_12"))


def test_bad_branch_gate_shape_is_a_user_error():
  m = create_model("cifar_resnet20", stage_sizes=(1, 1, 1))
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(UserError, match=r"\(3,\)"):
    jax.eval_shape(lambda: m.init(jax.random.key(0), x, branch_gates=jnp.ones(4)))


def test_ghost_group_size_must_divide_the_batch():
  m = create_model("cifar_resnet20", stage_sizes=(1, 1, 1), bn_group_size=3)
  with pytest.raises(UserError, match="bn_group_size=3"):
    jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((4, 8, 8, 3)), train=True))


def test_cifar_depth_factories_reject_depths_outside_their_family():
  # 6n+2 (He et al. 2015 §4.2, two-layer units) and 9n+2 (He et al. 2016, three-layer bottlenecks): a depth
  # outside the family must not silently build the next smaller net.
  with pytest.raises(ValueError, match=r"9n\+2"):
    registry._cifar_9n2(165)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r"6n\+2"):
    registry._cifar_6n2(21)  # pylint: disable=protected-access
  assert registry._cifar_9n2(164).defaults["stage_sizes"] == (18, 18, 18)  # pylint: disable=protected-access


def _variable_paths(model, size):
  """'/'-joined paths of every variable (parameters and BatchNorm statistics), as config.freeze sees them."""
  variables = counting.abstract_variables(model, (1, size, size, 3))
  return ["/".join(key.key for key in path) for tree in variables.values()
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


# One name per family of the registry (each names its modules its own way), then the options that change names.
_GROUP_CASES = [(name, {}) for name in (
    "resnet18", "resnet50", "plain18", "preact_resnet152", "resnext50_32x4d", "wide_resnet50_2", "cifar_resnet20",
    "cifar_plain20", "cifar_preact_resnet20", "cifar_resnet164", "cifar_preact_resnet164", "resnext29_8x64d",
    "densenet_bc_100_12", "resnet50d", "resnet18d", "resnet50s")] + [
    ("resnet50d", {"scan_units": True}), ("resnet26d", {"features_only": True}),
    ("resnet50", {"scan_units": True}), ("cifar_preact_resnet164", {"scan_units": True}),
    ("preact_resnet152", {"features_only": True}), ("cifar_resnet20", {"features_only": True}),
    ("resnet18", {"num_classes": 0}), ("densenet_bc_190_40", {"num_classes": 0}),
    ("cifar_resnet110", {"shortcut": "exclusive_gate"}), ("cifar_resnet110", {"block": "single"}),
    ("cifar_resnet110", {"shortcut_type": "C"})]


@pytest.mark.parametrize("name,options", _GROUP_CASES)
def test_every_variable_is_in_exactly_one_named_group(name, options):
  # config.freeze, lr_multipliers and init_exclude name these groups; a variable in none would be unreachable by
  # stage names, one in two would be frozen by one name and trained faster by another.
  model = create_model(name, **options)
  is_resnet = isinstance(model, ResNet)
  # Three units (or two dense layers) per stage trace fast, are named as the full nets' and hold a scan.
  model = model.clone(**(dict(stage_sizes=tuple(min(n, 3) for n in model.stage_sizes)) if is_resnet else
                         dict(depth=16)))
  paths = _variable_paths(model, 32)
  groups = parameter_groups(paths)
  stages = len(model.stage_sizes) if is_resnet else model.num_blocks
  assert list(groups) == ["stem", *[f"stage{s}" for s in range(1, stages + 1)], "head"]
  for path in paths:
    assert len([group for group, regex in groups.items() if re.search(regex, path)]) == 1, path
  has_head = model.num_classes > 0 and not getattr(model, "features_only", False)
  for group, regex in groups.items():
    assert any(re.search(regex, path) for path in paths) == (group != "head" or has_head), group
