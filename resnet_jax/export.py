r"""A trained network out of JAX: the inference graph with BatchNorm folded, as StableHLO and as ONNX.

    python -m resnet_jax.export --workdir runs/quickstart --out runs/quickstart_export --format stablehlo,onnx
    python -m resnet_jax.export --workdir runs/r50 --out gs://bucket/r50 --batch dynamic --features

    from resnet_jax import export
    manifest = export.export('runs/quickstart', ['stablehlo', 'onnx'], 'runs/quickstart_export')
    graph = export.fold_batch_norm(run.model, run.variables)     # a jittable function: graph(images_uint8)

The inference graph (`InferenceGraph`) is the network as a list of operations on NHWC values: conv (with bias),
scale-and-shift, ReLU, add, multiply, sigmoid, max/avg pooling, option-A zero padding, channel concatenation,
global mean and the dense head. `inference_graph(model, variables)` writes it from a `Classifier` (or a bare
backbone) and its variables, BatchNorm as a scale-and-shift with the running statistics, no dropout (identity at
inference), stochastic depth as its test-time multiplier p_l, lesioned units as 0. Every parameter and statistic of
the variables must be used by it, or it refuses (a layer it does not know). `fold_batch_norm` then folds each
scale-and-shift whose input is a convolution read by nothing else into that convolution (W' = W * s per output
channel, b' = b * s + t): exact up to float32 rounding.

Where BatchNorm is NOT folded (kept as one scale-and-shift, `InferenceGraph.kept` names each): the BN of a
pre-activation unit ((d)/(e): its input is the sum of shortcut and branch, not one conv), the network's final BN of
full pre-activation nets, BN after the addition (order (b)), and DenseNet's BN-ReLU before each conv (its input is
a concatenation). Folding forward into the following conv is never exact in the zoo: every such BN is followed by
a ReLU before the next conv (and a padded conv would see the shifted zeros at the borders).

Input: raw pixels, uint8 NHWC, normalised inside (as `evaluate.predict` takes them); output: float32 logits, or
the pooled features (`features=True`). The graph is float32 whatever the run's compute dtype.

Formats (each file is written whole, `export.json` last, after every check passed; nothing is written before):
  stablehlo  `jax.export` serialized bytes (`model.stablehlo`; lowered for CPU, CUDA and TPU where the
             installed jaxlib can), parameters embedded. `jax.export.deserialize(data).call(images)` runs it
             without resnet_jax.
  onnx       `model.onnx`, written here with the `onnx` package's helper API (opset 17): NCHW inside (one
             Transpose of the uint8 input), Conv with the folded bias, Mul+Add for the kept BNs, checked with
             `onnx.checker` and run in onnxruntime before anything is written. Needs the `export` extra.
The sidecar `export.json` says the input (name, shape, dtype), the normalisation, the classes, the source run
and step, which BNs were folded, and the largest relative difference of each format's logits from the
checkpoint's own (`model.apply`) on test images.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
from typing import Any, Optional, Sequence, Union

from absl import logging
import flax
from flax import traverse_util
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import classifier as classifier_lib
from resnet_jax import errors
from resnet_jax import storage
from resnet_jax.errors import UserError
from resnet_jax.models import conv as conv_lib
from resnet_jax.models import layers as layers_lib
from resnet_jax.models import units as units_lib
from resnet_jax.models.densenet import DenseNet
from resnet_jax.models.resnet import ResNet
from resnet_jax.models.resnet import unscan_variables

FORMATS = ('stablehlo', 'onnx')
#: Formats asked for that are not built, and why (the error says it).
UNSUPPORTED_FORMATS = {
    'savedmodel': 'TF SavedModel needs TensorFlow (jax2tf), which this project does not install; TensorFlow can '
                  'run the StableHLO export (tf.XlaCallModule) or convert the ONNX one',
    'tflite': 'LiteRT/TFLite needs TensorFlow or ai-edge-torch, which this project does not install; convert the '
              'ONNX export with a LiteRT converter',
}
#: Which pip extra each format needs, and the modules it imports.
FORMAT_EXTRAS = {'onnx': ('export', ('onnx', 'onnxruntime'))}
FILES = {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
MANIFEST = 'export.json'
ONNX_OPSET = 17
#: Largest relative difference (max |a - b| / max |b|) from the checkpoint's logits an export may have.
TOLERANCE = {'folded': 1e-5, 'stablehlo': 1e-5, 'onnx': 1e-4}
#: Platforms the StableHLO module is lowered for (each one the installed jaxlib can lower for).
STABLEHLO_PLATFORMS = ('cpu', 'cuda', 'tpu')

Run = Any  # checkpoints.LoadedCheckpoint or anything with .model, .variables, .config, .step


# ---------------------------------------------------------------------------------------------------------------
# The inference graph
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Node:
  """One operation; its value is the node's index. `params` are float32 NumPy arrays (NHWC / HWIO layouts)."""
  op: str
  inputs: tuple[int, ...] = ()
  name: str = ''
  attrs: dict = dataclasses.field(default_factory=dict)
  params: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class InferenceGraph:
  """A network as a list of operations (topological order; node 0 is the input). Call it on NHWC images
  (`input_dtype`: uint8 for a `Classifier`, whose normalisation is node 1; float32 for a bare backbone).

  folded: (BatchNorm, conv) pairs folded by `fold_batch_norm`; kept: the BatchNorms left as a scale-and-shift,
  each with the reason (what its input is)."""
  nodes: list
  output: int
  input_dtype: str = 'uint8'
  output_name: str = 'logits'
  folded: list = dataclasses.field(default_factory=list)
  kept: list = dataclasses.field(default_factory=list)

  @property
  def params(self) -> list[dict]:
    return [node.params for node in self.nodes]

  def apply(self, params: Sequence[dict], images) -> jax.Array:
    """The graph's function with `params` (as `self.params`) as an argument: jit it to keep them out of the
    compiled program."""
    return _run(self.nodes, params, self.output, images)

  def __call__(self, images) -> jax.Array:
    """Logits (or features) of `images`, parameters as constants (what `jax.export` embeds)."""
    return _run(self.nodes, self.params, self.output, images)

  def count(self, op: str) -> int:
    return sum(node.op == op for node in self.nodes)


def _run(nodes, params, output, images):
  values = []
  for node, p in zip(nodes, params):
    x = [values[i] for i in node.inputs]
    op, a = node.op, node.attrs
    if op == 'input':
      v = images
    elif op == 'normalize':
      v = (x[0].astype(jnp.float32) - p['mean']) / p['std']
    elif op == 'conv':
      pad = a['pad']
      # The zoo's convolution: on the CPU a 1x1 conv is a matrix product (XLA:CPU runs it faster than its conv).
      v = conv_lib.conv_general_dilated(x[0], p['kernel'], (a['stride'],) * 2, ((pad, pad), (pad, pad)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=a['groups'])
      if 'bias' in p:
        v = v + p['bias']
    elif op == 'affine':
      v = x[0] * p['scale'] + p['shift']
    elif op == 'relu':
      v = jnp.maximum(x[0], 0.0)
    elif op == 'add':
      v = x[0] + x[1]
    elif op == 'mul':
      v = x[0] * x[1]
    elif op == 'one_minus':
      v = 1.0 - x[0]
    elif op == 'sigmoid':
      v = jax.nn.sigmoid(x[0])
    elif op == 'maxpool':
      v = lax.reduce_window(x[0], -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    elif op == 'avgpool':
      v = lax.reduce_window(x[0], 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID') / 4.0
    elif op == 'zero_pad':
      s = a['stride']
      v = x[0][:, ::s, ::s, :] if s > 1 else x[0]
      v = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, a['extra']))) if a['extra'] else v
    elif op == 'concat':
      v = jnp.concatenate(x, axis=-1)
    elif op == 'mean':
      v = jnp.mean(x[0], axis=(1, 2))
    elif op == 'dense':
      v = x[0] @ p['kernel'] + p['bias']
    else:
      raise ValueError(f'unknown op {op}')
    values.append(v)
  return values[output]


class _Builder:
  """Writes the graph of a network, reading its variables by module path and noting which it used."""

  def __init__(self, params, stats, epsilon: float, input_dtype: str):
    self.nodes = [Node('input', name='images', attrs={'dtype': input_dtype})]
    self.channels = [None]
    self.params, self.stats, self.epsilon = params, stats, epsilon
    self.used = set()

  def variable(self, collection: str, path: str) -> np.ndarray:
    tree = self.params if collection == 'params' else self.stats
    for key in path.split('/'):
      if not isinstance(tree, dict) or key not in tree:
        raise UserError(f'the variables have no {collection} {path}: they do not belong to this model')
      tree = tree[key]
    self.used.add((collection, path))
    return np.asarray(tree, np.float32)

  def add(self, op: str, inputs, channels: int, name: str = '', params=None, **attrs) -> int:
    self.nodes.append(Node(op, tuple(inputs), name, attrs, params or {}))
    self.channels.append(channels)
    return len(self.nodes) - 1

  def conv(self, x: int, name: str, kernel_size: int, stride: int = 1, groups: int = 1, *, pad=None,
           bias: bool = False) -> int:
    params = {'kernel': self.variable('params', f'{name}/kernel')}
    if params['kernel'].shape[:2] != (kernel_size, kernel_size):
      raise UserError(f'{name}: kernel {params["kernel"].shape} is not {kernel_size}x{kernel_size}')
    if bias:
      params['bias'] = self.variable('params', f'{name}/bias')
    return self.add('conv', (x,), params['kernel'].shape[-1], name, params, stride=int(stride), groups=int(groups),
                    pad=int(kernel_size // 2 if pad is None else pad), kernel_size=int(kernel_size))

  def bn(self, x: int, name: str, relu: bool = False) -> int:
    """Inference BatchNorm, y = (x - mean) * gamma / sqrt(var + eps) + beta, as x * s + t (float64 arithmetic)."""
    gamma, beta = self.variable('params', f'{name}/scale'), self.variable('params', f'{name}/bias')
    mean, var = self.variable('batch_stats', f'{name}/mean'), self.variable('batch_stats', f'{name}/var')
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + self.epsilon)
    t = beta.astype(np.float64) - mean.astype(np.float64) * s
    y = self.add('affine', (x,), self.channels[x], name,
                 {'scale': s.astype(np.float32), 'shift': t.astype(np.float32)}, batch_norm=True)
    return self.add('relu', (y,), self.channels[x]) if relu else y

  def activation(self, kind: str, x: int, name: str) -> int:
    if kind == 'none':
      return x
    if kind == 'relu':
      return self.add('relu', (x,), self.channels[x])
    return self.bn(x, name, relu=kind == 'bn_relu')

  def scale(self, x: int, factor: float, name: str = '') -> int:
    c = self.channels[x]
    return self.add('affine', (x,), c, name, {'scale': np.full((c,), factor, np.float32),
                                              'shift': np.zeros((c,), np.float32)}, batch_norm=False)

  def head(self, x: int, num_classes: int, features: bool) -> int:
    x = self.add('mean', (x,), self.channels[x], 'pool')
    if features or not num_classes:
      if num_classes and features:
        self.variable('params', 'head/kernel'), self.variable('params', 'head/bias')  # present, not used
      return x
    params = {'kernel': self.variable('params', 'head/kernel'), 'bias': self.variable('params', 'head/bias')}
    return self.add('dense', (x,), num_classes, 'head', params)

  def check_all_used(self, model_name: str) -> None:
    unused = [f'{collection} {path}' for collection, tree in (('params', self.params), ('batch_stats', self.stats))
              for path in traverse_util.flatten_dict(tree, sep='/') if (collection, path) not in self.used]
    if unused:
      raise UserError(f'export does not know every layer of this {model_name}: {", ".join(unused[:5])}'
                      f'{" ..." if len(unused) > 5 else ""} would be left out of the inference graph')


def _branch_scales(model: ResNet) -> np.ndarray:
  """Each unit's test-time multiplier of its branch: 0 for lesioned units, p_l with stochastic depth."""
  scales = np.ones((model.num_units,), np.float64)
  scales[list(int(u) for u in model.lesioned_units)] = 0.0
  if model.survival_prob_last != 1.0:
    scales *= layers_lib.survival_probabilities(model.num_units, model.survival_prob_last)
  return scales


def _build_resnet(b: _Builder, x: int, model: ResNet, features: bool) -> int:
  order = model.order
  if model.stem == 'imagenet':
    x = b.conv(x, 'stem_conv', 7, 2)
    x = b.bn(x, 'stem_bn', relu=True)
    x = b.add('maxpool', (x,), b.channels[x], 'stem_pool')
  else:
    x = b.conv(x, 'stem_conv', 3, 1)
    x = b.activation(order.after_stem, x, 'stem_bn')
  scales = _branch_scales(model)
  projection_norm = order.projection_norm if model.projection_norm is None else model.projection_norm
  for info in model.describe_units():
    u = f'stage{info.stage}_unit{info.position}'
    unit = units_lib.ResidualUnit(layers=None, block=model.block, out_features=info.out_features,
                                  width=info.width, stride=info.stride, groups=model.cardinality,
                                  stride_on=model.stride_on, parent=None)
    branch_in = shortcut_in = x
    if info.preact != 'none':
      branch_in = b.activation(order.preactivation, x, f'{u}/bn1')
      if info.preact == 'shared':
        shortcut_in = branch_in
    bn_offset = 1 if 'bn' in order.preactivation else 0
    specs = unit.conv_specs()
    y = branch_in
    for i, (_, kernel, stride, groups) in enumerate(specs, start=1):
      y = b.conv(y, f'{u}/conv{i}', kernel, stride, groups)
      y = b.activation(order.after_last_conv if i == len(specs) else order.after_conv, y, f'{u}/bn{i + bn_offset}')
    h = None
    if model.shortcut != 'none':
      if units_lib.has_projection(model.shortcut, model.shortcut_type, info.changes_shape):
        h = b.conv(shortcut_in, f'{u}/proj_conv', 1, info.stride)
        if projection_norm:
          h = b.bn(h, f'{u}/proj_bn')
      elif info.changes_shape:
        extra = info.out_features - b.channels[shortcut_in]
        h = b.add('zero_pad', (shortcut_in,), info.out_features, f'{u}/shortcut', stride=info.stride, extra=extra)
      else:
        h = shortcut_in
    if model.shortcut in ('exclusive_gate', 'shortcut_gate'):
      gate = b.conv(shortcut_in, f'{u}/gate', 1, info.stride, pad=0, bias=True)
      gate = b.add('sigmoid', (gate,), info.out_features, f'{u}/gate_sigmoid')
      h = b.add('mul', (h, b.add('one_minus', (gate,), info.out_features)), info.out_features)
      if model.shortcut == 'exclusive_gate':
        y = b.add('mul', (y, gate), info.out_features)
    elif model.shortcut == 'scaling':
      h = b.scale(h, model.shortcut_scale, f'{u}/shortcut_scale')
      if model.scale_residual:
        y = b.scale(y, 1.0 - model.shortcut_scale, f'{u}/branch_scale')
    # 'dropout' shortcut: the identity at inference.
    if scales[info.index] != 1.0:
      y = b.scale(y, float(np.float32(scales[info.index])), f'{u}/stochastic_depth')
    out = y if h is None else b.add('add', (h, y), info.out_features, f'{u}/add')
    x = b.activation(order.after_addition, out, f'{u}/bn_out')
  x = b.activation(order.after_last_unit, x, 'final_bn')
  return b.head(x, model.num_classes, features)


def _build_densenet(b: _Builder, x: int, model: DenseNet, features: bool) -> int:
  x = b.conv(x, 'stem_conv', 3, 1)
  for block in range(model.num_blocks):
    maps = [x]
    for i in range(model.layers_per_block):
      prefix = f'block{block + 1}_layer{i + 1}'
      y = maps[0] if len(maps) == 1 else b.add('concat', maps, sum(b.channels[m] for m in maps))
      if model.bottleneck:
        y = b.bn(y, f'{prefix}_bn1', relu=True)
        y = b.conv(y, f'{prefix}_conv1', 1)
      y = b.bn(y, f'{prefix}_bn2', relu=True)
      maps.append(b.conv(y, f'{prefix}_conv2', 3))
    x = b.add('concat', maps, sum(b.channels[m] for m in maps), f'block{block + 1}')
    if block < model.num_blocks - 1:
      x = b.bn(x, f'transition{block + 1}_bn', relu=True)
      x = b.conv(x, f'transition{block + 1}_conv', 1)
      x = b.add('avgpool', (x,), b.channels[x], f'transition{block + 1}_pool')
  x = b.bn(x, 'final_bn', relu=True)
  return b.head(x, model.num_classes, features)


def inference_graph(model, variables, features: bool = False) -> InferenceGraph:
  """The unfolded inference graph of `model` (a `Classifier`, or a bare `ResNet` / `DenseNet` backbone) with
  `variables` ({'params', 'batch_stats'}): BatchNorm as a scale-and-shift of the running statistics.
  `features`: output the pooled features (the head's input) instead of the logits."""
  backbone, normalise = model, None
  params, stats = flax.core.unfreeze(variables['params']), flax.core.unfreeze(variables.get('batch_stats', {}))
  if isinstance(model, classifier_lib.Classifier):
    backbone, normalise = model.backbone, (model.mean, model.std)
    params, stats = params['backbone'], stats.get('backbone', {})
  if not isinstance(backbone, (ResNet, DenseNet)):
    raise UserError(f'export knows ResNet and DenseNet backbones, not {type(backbone).__name__}')
  if getattr(backbone, 'features_only', False):
    raise UserError('export takes a classifier (features_only=False); use features=True for the pooled features')
  backbone.check_options()
  if isinstance(backbone, ResNet) and (backbone.stem == 'deep' or backbone.downsample == 'avg'):
    # The graph has no deep stem or ResNet-D pool yet (He et al. 2019 §4.2); building one without them would be
    # another network, refused late by the logit check.
    raise UserError(f'export does not build the deep stem or the average-pool projection of ResNet-C/D yet '
                    f'(stem={backbone.stem!r}, downsample={backbone.downsample!r}); use the checkpoint in JAX')
  if isinstance(backbone, ResNet) and backbone.scan_units:
    unrolled = unscan_variables({'params': params, 'batch_stats': stats}, backbone)
    params, stats = unrolled['params'], unrolled['batch_stats']
  b = _Builder(params, stats, float(backbone.bn_epsilon), 'uint8' if normalise else 'float32')
  x = 0
  if normalise:
    mean, std = (np.asarray(v, np.float32).reshape(-1) for v in normalise)
    x = b.add('normalize', (x,), None, 'normalize', {'mean': mean, 'std': std})
  build = _build_resnet if isinstance(backbone, ResNet) else _build_densenet
  output = build(b, x, backbone, features)
  b.check_all_used(type(backbone).__name__)
  kept = [(node.name, 'unfolded') for node in b.nodes if node.attrs.get('batch_norm')]
  return InferenceGraph(b.nodes, output, 'uint8' if normalise else 'float32',
                        'features' if features or not backbone.num_classes else 'logits', [], kept)


def _why_kept(source: Node, readers: int) -> str:
  if source.op == 'conv':
    what = f'the output of {source.name}, which other layers read too'
  else:
    what = {'add': 'the sum of shortcut and branch', 'concat': 'a concatenation of feature maps',
            'relu': 'a ReLU', 'maxpool': 'a max-pool', 'normalize': 'the input'}.get(source.op, source.op)
    what += f' ({source.name})' if source.name else ''
  return f'its input is {what}, not the output of a conv read by nothing else'


def fold_graph(graph: InferenceGraph) -> InferenceGraph:
  """Folds every scale-and-shift (BatchNorm, stochastic depth's p_l, a scaling shortcut's factor) whose input is
  a convolution read by nothing else into that convolution: W' = W * s (per output channel), b' = b * s + t."""
  nodes = [dataclasses.replace(n, attrs=dict(n.attrs), params=dict(n.params)) for n in graph.nodes]
  consumers = [0] * len(nodes)
  for node in nodes:
    for i in node.inputs:
      consumers[i] += 1
  consumers[graph.output] += 1
  alias = list(range(len(nodes)))
  folded, kept = [], []
  for index, node in enumerate(nodes):
    node.inputs = tuple(alias[i] for i in node.inputs)
    if node.op != 'affine':
      continue
    source = node.inputs[0]
    conv = nodes[source]
    if conv.op == 'conv' and consumers[source] == 1 and index != graph.output:
      s, t = node.params['scale'].astype(np.float64), node.params['shift'].astype(np.float64)
      conv.params['kernel'] = (conv.params['kernel'].astype(np.float64) * s).astype(np.float32)
      bias = conv.params.get('bias', np.zeros_like(s)).astype(np.float64)
      conv.params['bias'] = (bias * s + t).astype(np.float32)
      consumers[source] = consumers[index]
      alias[index] = source
      if node.attrs.get('batch_norm'):
        folded.append((node.name, conv.name))
    elif node.attrs.get('batch_norm'):
      kept.append((node.name, _why_kept(conv, consumers[source])))
  output = alias[graph.output]
  # Drop the folded nodes and renumber.
  live = [i for i in range(len(nodes)) if alias[i] == i]
  new_index = {old: new for new, old in enumerate(live)}
  out_nodes = []
  for i in live:
    node = nodes[i]
    node.inputs = tuple(new_index[alias[j]] for j in node.inputs)
    out_nodes.append(node)
  return InferenceGraph(out_nodes, new_index[output], graph.input_dtype, graph.output_name, folded, kept)


def fold_batch_norm(model, variables, features: bool = False) -> InferenceGraph:
  """The inference graph of `model` with `variables`, BatchNorm folded into the preceding convolution wherever
  that is exact (see the module docstring for where it is not, and `InferenceGraph.kept`). Call the result on
  images as `model.apply(variables, images, train=False)` is called: same logits up to float32 rounding."""
  return fold_graph(inference_graph(model, variables, features))


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------


def to_onnx(graph: InferenceGraph, image_shape: Sequence[int], batch: Optional[int] = None) -> bytes:
  """The serialized ONNX model of `graph` (opset 17): input 'images' (N, H, W, C) of `graph.input_dtype`, N =
  `batch` or symbolic ('batch') when None; output `graph.output_name`. NCHW inside: one Transpose of the input."""
  import onnx  # pylint: disable=g-import-not-at-top  (the export extra)
  from onnx import helper, numpy_helper, TensorProto  # pylint: disable=g-import-not-at-top

  initializers, nodes = [], []
  counter = [0]

  def const(array, name: str) -> str:
    counter[0] += 1
    full = f'{name}_{counter[0]}' if name else f'c{counter[0]}'
    initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), full))
    return full

  def emit(op, inputs, out, **attrs):
    nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
    return out

  def per_channel(vector):
    return np.asarray(vector, np.float32).reshape(-1, 1, 1)

  names = []
  for index, node in enumerate(graph.nodes):
    out = f'v{index}'
    x = [names[i] for i in node.inputs]
    op, a, p = node.op, node.attrs, node.params
    label = node.name.replace('/', '.')
    if op == 'input':
      out = emit('Transpose', ['images'], out, perm=[0, 3, 1, 2])
      if graph.input_dtype != 'float32':
        out = emit('Cast', [out], f'v{index}_float', to=TensorProto.FLOAT)
    elif op == 'normalize':
      centred = emit('Sub', [x[0], const(per_channel(p['mean']), 'mean')], f'{out}_centred')
      emit('Div', [centred, const(per_channel(p['std']), 'std')], out)
    elif op == 'conv':
      inputs = [x[0], const(np.transpose(p['kernel'], (3, 2, 0, 1)), f'{label}.weight')]
      if 'bias' in p:
        inputs.append(const(p['bias'], f'{label}.bias'))
      k, pad = a['kernel_size'], a['pad']
      emit('Conv', inputs, out, kernel_shape=[k, k], strides=[a['stride']] * 2, pads=[pad] * 4, group=a['groups'])
    elif op == 'affine':
      scaled = emit('Mul', [x[0], const(per_channel(p['scale']), f'{label}.scale')], f'{out}_scaled')
      emit('Add', [scaled, const(per_channel(p['shift']), f'{label}.shift')], out)
    elif op == 'relu':
      emit('Relu', x, out)
    elif op == 'add':
      emit('Add', x, out)
    elif op == 'mul':
      emit('Mul', x, out)
    elif op == 'one_minus':
      emit('Sub', [const(np.ones((), np.float32), 'one'), x[0]], out)
    elif op == 'sigmoid':
      emit('Sigmoid', x, out)
    elif op == 'maxpool':
      emit('MaxPool', x, out, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    elif op == 'avgpool':
      emit('AveragePool', x, out, kernel_shape=[2, 2], strides=[2, 2])
    elif op == 'zero_pad':
      v = x[0]
      if a['stride'] > 1:
        s = a['stride']
        v = emit('Slice', [v, const(np.array([0, 0], np.int64), 'starts'),
                           const(np.array([2 ** 62, 2 ** 62], np.int64), 'ends'),
                           const(np.array([2, 3], np.int64), 'axes'), const(np.array([s, s], np.int64), 'steps')],
                 f'{out}_subsampled')
      if a['extra']:
        v = emit('Pad', [v, const(np.array([0, 0, 0, 0, 0, a['extra'], 0, 0], np.int64), 'pads')], out,
                 mode='constant')
      out = v
    elif op == 'concat':
      emit('Concat', x, out, axis=1)
    elif op == 'mean':
      pooled = emit('GlobalAveragePool', x, f'{out}_pooled')
      emit('Flatten', [pooled], out, axis=1)
    elif op == 'dense':
      emit('Gemm', [x[0], const(p['kernel'], 'head.weight'), const(p['bias'], 'head.bias')], out)
    else:
      raise ValueError(f'unknown op {op}')
    names.append(out)
  nodes.append(helper.make_node('Identity', [names[graph.output]], [graph.output_name]))
  n = batch if batch is not None else 'batch'
  elem = TensorProto.UINT8 if graph.input_dtype == 'uint8' else TensorProto.FLOAT
  inputs = [helper.make_tensor_value_info('images', elem, [n, *[int(d) for d in image_shape]])]
  last = graph.nodes[graph.output]
  out_dim = last.params['bias'].shape[0] if last.op == 'dense' else None
  outputs = [helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT, [n, out_dim or 'features'])]
  onnx_graph = helper.make_graph(nodes, 'resnet_jax', inputs, outputs, initializers)
  model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)],
                            producer_name='resnet_jax.export')
  model.ir_version = min(model.ir_version, 8)  # opset 17's IR version: readable by older runtimes too
  onnx.checker.check_model(model, full_check=True)
  return model.SerializeToString()


def onnx_session(data: bytes, threads: int = 0):
  """An onnxruntime CPU session of serialized ONNX bytes (`threads` 0: onnxruntime's default)."""
  import onnxruntime  # pylint: disable=g-import-not-at-top  (the export extra)
  options = onnxruntime.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
  options.log_severity_level = 3
  return onnxruntime.InferenceSession(data, options, providers=['CPUExecutionProvider'])


# ---------------------------------------------------------------------------------------------------------------
# StableHLO
# ---------------------------------------------------------------------------------------------------------------


def to_stablehlo(graph: InferenceGraph, image_shape: Sequence[int], batch: Optional[int] = None) -> tuple[bytes, list]:
  """`jax.export` serialized bytes of `graph` (parameters embedded) for images (N, H, W, C), N = `batch` or
  symbolic when None; lowered for every platform of `STABLEHLO_PLATFORMS` this jaxlib can lower for. Returns
  (bytes, platforms)."""
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  shape = ('batch' if batch is None else str(batch),) + tuple(str(int(d)) for d in image_shape)
  spec = jax.ShapeDtypeStruct(jax_export.symbolic_shape(', '.join(shape)), jnp.dtype(graph.input_dtype))
  function = jax.jit(graph.__call__)
  try:
    exported = jax_export.export(function, platforms=STABLEHLO_PLATFORMS)(spec)
  except Exception:  # pylint: disable=broad-except  (a jaxlib without another platform's lowering rules)
    exported = jax_export.export(function, platforms=('cpu',))(spec)
  return bytes(exported.serialize()), list(exported.platforms)


# ---------------------------------------------------------------------------------------------------------------
# export(): checks, artifacts, validation, files
# ---------------------------------------------------------------------------------------------------------------


def parse_formats(formats: Union[str, Sequence[str]]) -> list[str]:
  """'stablehlo,onnx' or a list -> the formats, each checked (known, its extra installed)."""
  names = [f.strip().lower() for f in (formats.split(',') if isinstance(formats, str) else formats) if f.strip()]
  if not names:
    raise UserError(f'--format is empty; choose from {",".join(FORMATS)}')
  for name in names:
    if name in UNSUPPORTED_FORMATS:
      raise UserError(f'format {name!r} is not built: {UNSUPPORTED_FORMATS[name]}. Choose from {",".join(FORMATS)}')
    if name not in FORMATS:
      raise UserError(f'unknown format {name!r}; choose from {",".join(FORMATS)} (comma-separated)')
    extra, modules = FORMAT_EXTRAS.get(name, (None, ()))
    for module in modules:
      try:
        __import__(module)
      except ImportError:
        raise UserError(f"format {name!r} needs the {module} package: pip install 'resnet_jax[{extra}]'") from None
  return list(dict.fromkeys(names))


def parse_batch(batch: Union[int, str, None]) -> Optional[int]:
  """A positive batch size, or None for 'dynamic' (a symbolic batch dimension)."""
  if batch is None or (isinstance(batch, str) and batch.strip().lower() == 'dynamic'):
    return None
  text = str(batch).strip()
  if isinstance(batch, bool) or not text.isdigit() or int(text) < 1:
    raise UserError(f'--batch {batch!r} is neither a positive number nor dynamic')
  return int(text)


def _check_out(out, workdir: Optional[str], overwrite: bool) -> None:
  target = str(storage.resolve(out)).rstrip('/')
  if workdir is not None:
    protected = str(storage.resolve(workdir)).rstrip('/') + '/' + checkpoints.CHECKPOINT_DIR
    if target == protected or target.startswith(protected + '/'):
      raise UserError(f'--out {out} is inside the checkpoints of {workdir}; choose a directory outside '
                      f'{protected}')
  if storage.exists(out):
    if not storage.is_dir(out):
      raise UserError(f'--out {out} is a file, not a directory; choose another path')
    if storage.list_names(out) and not overwrite:
      raise UserError(f'--out {out} exists and is not empty; choose a new directory or pass --overwrite')


def _relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    return float('inf')
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def test_images(image_shape: Sequence[int], batch: int, seed: int = 0) -> np.ndarray:
  """Deterministic uint8 test images (N, H, W, C): smooth random fields, as natural images have."""
  rng = np.random.default_rng(seed)
  h, w, c = (int(d) for d in image_shape)
  coarse = rng.uniform(0, 255, (batch, max(h // 4, 1), max(w // 4, 1), c))
  images = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)[:, :h, :w]
  images = np.pad(images, ((0, 0), (0, h - images.shape[1]), (0, w - images.shape[2]), (0, 0)), mode='edge')
  return np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)


def _reference_fn(model, variables, features: bool):
  """jit(images -> the checkpoint's own logits (or pooled features)) with `model.apply`, in float32 as the export
  (a run whose compute dtype is bfloat16, as on an accelerator, is compared at float32)."""
  is_classifier = isinstance(model, classifier_lib.Classifier)
  backbone = (model.backbone if is_classifier else model).clone(dtype=jnp.float32)
  params = variables['params']['backbone'] if is_classifier else variables['params']
  if features:  # the backbone without its head
    backbone = backbone.clone(num_classes=0)
    params = {name: tree for name, tree in params.items() if name != 'head'}
  model = model.clone(backbone=backbone) if is_classifier else backbone
  variables = dict(variables, params=dict(variables['params'], backbone=params) if is_classifier else params)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return lambda images: np.asarray(apply(variables, images), np.float32)


def _image_shape_of(workdir: str, step: int) -> list[int]:
  with checkpoints.Checkpointer(workdir, read_only=True) as checkpointer:
    return [int(d) for d in checkpointer.restore_meta(step)['model']['image_shape']]


def export(run_or_workdir: Union[str, os.PathLike, Run], formats: Union[str, Sequence[str]] = FORMATS,
           out: Union[str, os.PathLike, None] = None, *, step: Optional[int] = None,
           batch: Union[int, str, None] = 'dynamic', features: bool = False, overwrite: bool = False,
           image_shape: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """Exports a run to `out` in `formats` ('stablehlo', 'onnx'); returns the manifest written to out/export.json.

  Args:
    run_or_workdir: a workdir (its checkpoint at `step`, default the newest that restores) or a loaded run
      (`checkpoints.load(...)`; then `image_shape` is needed).
    formats: 'stablehlo,onnx' or a list.
    out: the directory to write (a local path or a gs:// / s3:// URL); must be new or empty, unless `overwrite`.
    batch: the batch dimension: a number, or 'dynamic' (symbolic; the default).
    features: output the pooled features instead of the logits.
    image_shape: (H, W, C) of the input; default the run's.
  Every check (formats and their extras, batch, out, the checkpoint, every format's logits against the
  checkpoint's own) runs before anything is written; a mistake is a UserError.
  """
  names = parse_formats(formats)
  fixed_batch = parse_batch(batch)
  if out is None:
    raise UserError('--out is required: the directory to write the export to')
  workdir = None
  if isinstance(run_or_workdir, (str, os.PathLike)):
    workdir = os.fspath(run_or_workdir)
    _check_out(out, workdir, overwrite)
    run = checkpoints.load(workdir, step=step)
    image_shape = image_shape or _image_shape_of(workdir, run.step)
  else:
    run = run_or_workdir
    _check_out(out, None, overwrite)
    if image_shape is None:
      raise UserError('export of a loaded run needs image_shape=(H, W, C); a workdir gives its own')
  image_shape = [int(d) for d in image_shape]
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise UserError(f'image_shape must be (H, W, C), got {image_shape}')

  graph = fold_batch_norm(run.model, run.variables, features)
  reference = _reference_fn(run.model, run.variables, features)
  # Validation batches: the fixed batch, or two sizes for a dynamic one.
  sizes = [fixed_batch] if fixed_batch is not None else [1, 3]
  samples = [test_images(image_shape, n, seed=n) for n in sizes]
  expected = [reference(images) for images in samples]
  folded_fn = jax.jit(graph.apply)
  errors_by_format = {'folded': max(_relative_error(folded_fn(graph.params, x), e) for x, e in zip(samples, expected))}

  artifacts, platforms = {}, None
  for name in names:
    if name == 'stablehlo':
      data, platforms = to_stablehlo(graph, image_shape, fixed_batch)
      exported = jax.export.deserialize(bytearray(data))
      errors_by_format['stablehlo'] = max(_relative_error(exported.call(x), e) for x, e in zip(samples, expected))
    else:
      data = to_onnx(graph, image_shape, fixed_batch)
      session = onnx_session(data)
      errors_by_format['onnx'] = max(_relative_error(session.run(None, {'images': x})[0], e)
                                     for x, e in zip(samples, expected))
    artifacts[name] = data
  for name, error in errors_by_format.items():
    if not error <= TOLERANCE[name]:
      raise RuntimeError(f'the {name} export differs from the checkpoint by {error:.3g} (relative; tolerance '
                         f'{TOLERANCE[name]:g}): a bug in resnet_jax.export, nothing was written')

  model_config = run.config.model.to_dict() if hasattr(run.config, 'model') else {}
  mean, std = ((np.asarray(v, np.float32).reshape(-1).tolist() for v in (run.model.mean, run.model.std))
               if isinstance(run.model, classifier_lib.Classifier) else (None, None))
  out_dim = int(np.asarray(expected[0]).shape[-1])
  manifest = {
      'format_version': 1,
      'files': {name: FILES[name] for name in names},
      'input': {'name': 'images', 'shape': [fixed_batch, *image_shape], 'dtype': graph.input_dtype,
                'layout': 'NHWC', 'values': 'raw pixels 0-255, normalised inside' if mean is not None else
                'normalised floats'},
      'normalisation': {'mean': mean, 'std': std, 'inside': mean is not None},
      'output': {'name': graph.output_name, 'shape': [fixed_batch, out_dim], 'dtype': 'float32'},
      'classes': None if features else out_dim,
      'source': {'workdir': str(storage.resolve(workdir)) if workdir else None, 'step': int(run.step),
                 'model': model_config.get('name'), 'model_options': model_config},
      'batch_norm': {'folded': len(graph.folded), 'kept_as_scale_shift': [
          {'name': name, 'why': why} for name, why in graph.kept]},
      'stablehlo_platforms': platforms,
      'onnx_opset': ONNX_OPSET if 'onnx' in names else None,
      'max_relative_error': {name: float(f'{e:.3g}') for name, e in errors_by_format.items()},
      'validated_on': {'batches': sizes, 'images': 'resnet_jax.export.test_images (seed = batch size)'},
      'created': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
      'versions': {'jax': jax.__version__},
  }
  storage.make_dirs(out)
  root = storage.resolve(out)
  for name, data in artifacts.items():
    storage.write_bytes(root / FILES[name], data)
  storage.write_text(root / MANIFEST, json.dumps(manifest, indent=2) + '\n')
  return manifest


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m resnet_jax.export',
      description='Exports a trained run (BatchNorm folded; uint8 NHWC input, normalisation inside) to StableHLO '
                  'and ONNX, each checked against the checkpoint before anything is written.')
  parser.add_argument('--workdir', required=True, help='the run to export (its newest checkpoint that restores)')
  parser.add_argument('--out', required=True, help='directory to write (new or empty; a local path or gs://, s3://)')
  parser.add_argument('--format', default=','.join(FORMATS), help=f'comma-separated: {",".join(FORMATS)}')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--batch', default='dynamic', help="batch dimension: a number, or 'dynamic' (default)")
  parser.add_argument('--features', action='store_true', help='output the pooled features instead of the logits')
  parser.add_argument('--overwrite', action='store_true', help='write into a non-empty --out')
  args = parser.parse_args(argv)
  with errors.exit_on_error():
    logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines are not for the terminal
    manifest = export(args.workdir, args.format, args.out, step=args.step, batch=args.batch,
                      features=args.features, overwrite=args.overwrite)
  source, files = manifest['source'], manifest['files']
  errors_text = ', '.join(f'{k} {v:.1e}' for k, v in manifest['max_relative_error'].items())
  kept = len(manifest['batch_norm']['kept_as_scale_shift'])
  print(f'wrote {args.out}: {", ".join(files.values())}, {MANIFEST}; {source["model"]} step {source["step"]}, '
        f'input {manifest["input"]["shape"]} uint8 -> {manifest["output"]["name"]} {manifest["output"]["shape"]}; '
        f'BatchNorm: {manifest["batch_norm"]["folded"]} folded, {kept} kept as scale-and-shift; '
        f'largest relative difference from the checkpoint: {errors_text}')


if __name__ == '__main__':
  main()
