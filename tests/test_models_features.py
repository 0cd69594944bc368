"""Backbone use (timm's features_only contract): feature maps, their strides and channels, pooled features.

Shapes come from `jax.eval_shape` (no compilation, so ResNet-50 at 224x224 costs nothing); values are checked
on tiny networks against the intermediate activations of the full classifier with the same variables.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_variables
from resnet_jax.errors import UserError
from resnet_jax.models import create_model
from resnet_jax.models.counting import abstract_variables


def feature_shapes(model, input_shape):
  variables = abstract_variables(model, input_shape)
  return [tuple(f.shape) for f in jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                                                 jax.ShapeDtypeStruct(input_shape, jnp.float32))]


@pytest.mark.parametrize("name,channels", [
    ("resnet50", (64, 256, 512, 1024, 2048)),
    ("resnext50_32x4d", (64, 256, 512, 1024, 2048)),
    ("preact_resnet152", (64, 256, 512, 1024, 2048)),
    ("resnet18", (64, 64, 128, 256, 512)),
    ("resnet50d", (64, 256, 512, 1024, 2048)),  # deep stem: the same strides, 64 channels out of its 3rd conv
    ("resnet50s", (128, 256, 512, 1024, 2048)),
])
def test_imagenet_feature_maps_have_the_published_strides_and_channels(name, channels):
  model = create_model(name, features_only=True)
  shapes = feature_shapes(model, (1, 224, 224, 3))
  assert shapes == [(1, 224 // s, 224 // s, c) for s, c in zip((2, 4, 8, 16, 32), channels)]
  info = model.feature_info()
  assert [i["num_chs"] for i in info] == list(channels) and [i["reduction"] for i in info] == [2, 4, 8, 16, 32]
  four = create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
  assert feature_shapes(four, (1, 224, 224, 3)) == shapes[1:]
  assert [i["index"] for i in four.feature_info()] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preact_resnet164"])
def test_cifar_feature_maps_are_indices_0_to_3(name):
  model = create_model(name, features_only=True)
  expansion = 4 if name.endswith("164") else 1
  assert feature_shapes(model, (2, 32, 32, 3)) == [(2, 32, 32, 16), (2, 32, 32, 16 * expansion),
                                                   (2, 16, 16, 32 * expansion), (2, 8, 8, 64 * expansion)]
  assert [i["reduction"] for i in model.feature_info()] == [1, 1, 2, 4]
  with pytest.raises(UserError, match="out_indices"):
    create_model(name, features_only=True, out_indices=(1, 4))


def test_the_features_model_has_the_classifier_tree_without_the_head():
  classifier = abstract_variables(create_model("resnet50"), (1, 64, 64, 3))
  backbone = abstract_variables(create_model("resnet50", features_only=True), (1, 64, 64, 3))
  del classifier["params"]["head"]
  assert jax.tree_util.tree_structure(backbone) == jax.tree_util.tree_structure(classifier)
  assert jax.tree_util.tree_map(lambda a: a.shape, backbone) == jax.tree_util.tree_map(lambda a: a.shape,
                                                                                        classifier)


@pytest.mark.parametrize("options", [
    dict(name="cifar_resnet20"),
    dict(name="cifar_preact_resnet20"),
    dict(name="resnet50", stem_width=8, stage_widths=(4, 8, 8, 8), stage_sizes=(1, 2, 1, 1)),
    dict(name="resnet50d", stem_width=4, stage_widths=(4, 8, 8, 8), stage_sizes=(1, 2, 1, 1)),
])
def test_each_feature_map_is_the_classifiers_intermediate_activation(options):
  options = dict(options)
  name = options.pop("name")
  if name.startswith("cifar"):
    options.update(stage_sizes=(2, 1, 1), stage_widths=(4, 8, 8))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  classifier = create_model(name, **options)
  variables = random_variables(classifier, x.shape)
  logits, state = classifier.apply(variables, x, capture_intermediates=True)
  inner = state["intermediates"]
  preact = classifier.unit_order == "full_preact"
  want = [inner["stem_bn"]["__call__"][0] if "stem_bn" in inner else None]
  for stage, units in enumerate(classifier.stage_sizes, start=1):
    want.append(inner[f"stage{stage}_unit{units}"]["__call__"][0])
  if preact:  # the last map carries the final BN-ReLU (timm's ResNetV2 convention)
    want[-1] = inner["final_bn"]["__call__"][0]
  backbone = create_model(name, features_only=True, **options)
  variables_without_head = {"params": {k: v for k, v in variables["params"].items() if k != "head"},
                            "batch_stats": variables["batch_stats"]}
  maps = backbone.apply(variables_without_head, x)
  assert len(maps) == len(want)
  for got, expected in zip(maps[1:], want[1:]):
    np.testing.assert_array_equal(got, expected)
  if want[0] is not None:
    np.testing.assert_array_equal(maps[0], want[0])
  # num_classes=0: the pooled features, exactly what the head multiplies.
  pooled = create_model(name, num_classes=0, **options).apply(variables_without_head, x)
  head = variables["params"]["head"]
  np.testing.assert_allclose(pooled @ head["kernel"] + head["bias"], logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pooled, jnp.mean(maps[-1], axis=(1, 2)), rtol=1e-6, atol=1e-6)
