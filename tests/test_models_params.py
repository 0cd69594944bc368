"""Parameter deltas of the shortcut options and multiply-adds, counted without compute (jax.eval_shape / jaxpr).

The exact count of every registry name is asserted in test_models_zoo.py."""

import pytest

from resnet_jax.models import count_macs, count_params, create_model


def test_scan_does_not_change_counts():
  for name in ("cifar_resnet110", "cifar_preact_resnet164", "resnext50_32x4d"):
    assert count_params(create_model(name, scan_units=True)) == count_params(create_model(name))


def test_option_a_adds_no_parameters():
  # He et al. 2015 §4.2: residual nets with option A have exactly the parameters of the plain nets.
  assert count_params(create_model("cifar_resnet20")) == count_params(create_model("cifar_plain20"))
  assert count_params(create_model("resnet34", shortcut_type="A")) == count_params(create_model("plain34"))
  assert count_params(create_model("resnet50", shortcut_type="A")) == count_params(
      create_model("resnet50", shortcut="none"))


def test_option_b_and_c_parameter_deltas():
  a = count_params(create_model("cifar_resnet20"))
  # B: projections (1x1 conv + BN) at the two transitions 16->32, 32->64: 512+64 + 2048+128 = 2,752.
  assert count_params(create_model("cifar_resnet20", shortcut_type="B")) - a == 2_752
  # C: a projection on all 9 units: 3*(16*16+32) + (16*32+64) + 2*(32*32+64) + (32*64+128) + 2*(64*64+128).
  assert count_params(create_model("cifar_resnet20", shortcut_type="C")) - a == 14_240
  # ImageNet ResNet-34: B adds its three transition projections (torchvision's count is B).
  b34 = count_params(create_model("resnet34"))
  assert b34 - count_params(create_model("resnet34", shortcut_type="A")) == (64 * 128 + 256) + (
      128 * 256 + 512) + (256 * 512 + 1024)
  # C adds a projection on every one of the other 13 units.
  extra_c = 3 * (64 * 64 + 128) + 3 * (128 * 128 + 256) + 5 * (256 * 256 + 512) + 2 * (512 * 512 + 1024)
  assert count_params(create_model("resnet34", shortcut_type="C")) - b34 == extra_c
  # The 1x1-conv shortcut variant of He et al. 2016 Table 1 is a projection on every unit, i.e. option C.
  assert count_params(create_model("cifar_resnet20", shortcut="conv1x1")) - a == 14_240


def test_shortcut_variant_parameters():
  a = count_params(create_model("cifar_resnet20"))
  # One 1x1 gate conv with bias per unit, from the unit input to the unit output channels.
  gates = 3 * (16 * 16 + 16) + (16 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 64 + 64) + 2 * (64 * 64 + 64)
  assert count_params(create_model("cifar_resnet20", shortcut="exclusive_gate")) - a == gates
  assert count_params(create_model("cifar_resnet20", shortcut="shortcut_gate")) - a == gates
  for variant in ("scaling", "dropout"):
    assert count_params(create_model("cifar_resnet20", shortcut=variant)) == a


def test_ghost_bn_and_precision_options_do_not_change_counts():
  a = count_params(create_model("cifar_resnet20"))
  assert count_params(create_model("cifar_resnet20", bn_group_size=2, dtype="bfloat16")) == a


@pytest.mark.parametrize("name,gmacs", [("resnet18", 1.814), ("resnet34", 3.664), ("resnet50", 4.089)])
def test_macs_match_torchvision(name, gmacs):
  macs = count_macs(create_model(name), (1, 224, 224, 3))
  assert abs(macs / 1e9 - gmacs) / gmacs < 0.01


def test_macs_of_v1_bottleneck_and_scan():
  # Stride on the first 1x1 (the paper's v1): 3.858 GMACs, He et al. 2015 Table 1's 3.8e9.
  assert abs(count_macs(create_model("resnet50", stride_on="1x1"), (1, 224, 224, 3)) / 1e9 - 3.858) < 0.01
  # Scan bodies are counted `length` times.
  assert count_macs(create_model("resnet50", scan_units=True)) == count_macs(create_model("resnet50"))
  # ResNeXt-50 (32x4d): torchvision 4.230 GMACs, the paper's 4.2e9.
  assert abs(count_macs(create_model("resnext50_32x4d")) / 1e9 - 4.230) < 0.01


# "Bag of Tricks" (He et al. 2019) Table 5 GFLOPs of ResNet-50 and its tweaks, and what count_macs gives (conv and
# fc multiply-adds). v1 agrees to the printed precision. The paper does not say how it counts; its B/C/D figures
# exceed the multiply-adds by 0.04 / 0.01 / 0.02 G. D's average pool has no multiply-adds (its 1.4 M additions
# would not reach 0.01 G in any convention) and its 1x1 conv does the same work after the pool as strided.
@pytest.mark.parametrize("name,options,paper,ours", [
    ("resnet50", dict(stride_on="1x1"), 3.86, 3.858), ("resnet50", {}, 4.13, 4.089),
    ("resnet50c", {}, 4.34, 4.329), ("resnet50d", {}, 4.35, 4.329)])
def test_macs_of_the_bag_of_tricks_tweaks(name, options, paper, ours):
  gmacs = count_macs(create_model(name, **options), (1, 224, 224, 3)) / 1e9
  assert round(gmacs, 3) == ours and abs(gmacs - paper) <= 0.041
