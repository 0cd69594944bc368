r"""Writes tests/golden/training/CASE.json: the PyTorch reference's per-step losses and final weights' summaries for
the training-parity cases (tests/golden/training_parity.py), and prints how resnet_jax compares step by step.

  /path/to/torch-venv/bin/python tests/golden/make_training_golden.py [--cases a,b] [--results OUT.json]

Needs torch and torchvision (the `torch` extra) beside resnet_jax; float32 on the CPU. For each case: the initial
weights (`golden_initial_state_dict`: deterministic, rebuilt by the test without torch), the batch plan that
resnet_jax's device-resident pipeline draws, then the reference (benchmarks/peers/torch_reference.py `replay`)
and resnet_jax (`JaxRun.train`, the product's train step) trained on those batches; the comparison (per step: loss,
relative L2 distance of the parameter vectors and of the BN running statistics) goes into the golden file's
`measured` and, with --results, a results JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), 'benchmarks', 'peers'))

import training_parity as tp  # noqa: E402  pylint: disable=wrong-import-position
import torch_reference  # noqa: E402  pylint: disable=wrong-import-position


def reference_state_dict(case: tp.Case, run: tp.JaxRun, init: str, seed: int = 0) -> dict[str, np.ndarray]:
  """'golden': the deterministic weights; 'torch': torch's own initialisation of the reference model."""
  if init == 'golden':
    return tp.golden_initial_state_dict(case, run.backbone, run.image_shape)
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = torch_reference.create_model(case.model, int(run.experiment.num_classes), run.image_shape[-1],
                                       case.stage_sizes)
  return torch_reference.state_arrays(model)


def run_case(name: str, case: tp.Case, init: str, workdir: str) -> dict:
  """Both implementations from the same weights on the same batches; the per-step comparison."""
  run = tp.JaxRun(case, workdir)
  state_dict = reference_state_dict(case, run, init)
  plan = run.batch_plan()
  started = time.perf_counter()
  reference_states = []
  reference = torch_reference.replay(
      case.model, state_dict, run.images, run.labels, plan, mean=run.mean, std=run.std, padding=case.crop_padding,
      lr=case.base_lr, momentum=case.momentum, weight_decay=case.weight_decay, milestones=case.boundaries,
      num_classes=int(run.experiment.num_classes), stage_sizes=case.stage_sizes,
      record=lambda step, arrays: reference_states.append(arrays))
  reference_seconds = time.perf_counter() - started
  started = time.perf_counter()
  jax_run = run.train(state_dict)
  jax_seconds = time.perf_counter() - started
  counts = tp.bn_counts(run.backbone, run.image_shape, case.batch_size)
  if case.bn_running_var == 'biased':  # torch keeps the unbiased one; map it exactly (see biased_from_unbiased)
    for step, arrays in enumerate(reference_states):
      for key in arrays:
        if key.endswith('running_var'):
          arrays[key] = tp.biased_from_unbiased(arrays[key], state_dict[key], counts[key], step + 1).astype(
              np.float32)
  per_step = []
  for step in range(case.steps):
    ours, theirs = jax_run['states'][step], reference_states[step]
    per_step.append({
        'step': step, 'lr': reference['lr'][step], 'loss_reference': reference['loss'][step],
        'loss_resnet_jax': jax_run['loss'][step],
        'loss_rel_diff': abs(jax_run['loss'][step] - reference['loss'][step]) / abs(reference['loss'][step]),
        'params_rel_l2': tp.relative_distance(tp.vector(ours, False), tp.vector(theirs, False)),
        'bn_stats_rel_l2': tp.relative_distance(tp.vector(ours, True), tp.vector(theirs, True)),
        'param_norm_reference': float(np.linalg.norm(tp.vector(theirs, False))),
        'bn_stats_norm_reference': float(np.linalg.norm(tp.vector(theirs, True))),
    })
  unbiased_gap = None
  if case.bn_running_var == 'biased':  # how far the two conventions are apart here, for the record
    raw = reference['final']
    ours = jax_run['final']
    unbiased_gap = max(float(np.max(np.abs(ours[k] - raw[k]) / np.abs(raw[k]))) for k in raw if k.endswith('var'))
  lrs = [float(x) for x in jax_run['lr']]
  assert np.allclose(lrs, reference['lr'], rtol=1e-6), (lrs, reference['lr'])
  return {
      'case': name, 'init': init, 'config': {k: list(v) if isinstance(v, tuple) else v
                                             for k, v in vars(case).items()},
      'mean': run.mean.tolist(), 'std': run.std.tolist(),
      'plan': {key: value.tolist() for key, value in plan.items()},
      'reference': {'loss': reference['loss'], 'lr': reference['lr'],
                    'param_norm': [s['param_norm_reference'] for s in per_step],
                    'bn_stats_norm': [s['bn_stats_norm_reference'] for s in per_step],
                    'final': tp.summary(reference_states[-1])},
      'measured': {
          'max_loss_rel_diff': max(s['loss_rel_diff'] for s in per_step),
          'final_params_rel_l2': per_step[-1]['params_rel_l2'],
          'final_bn_stats_rel_l2': per_step[-1]['bn_stats_rel_l2'],
          'max_params_rel_l2': max(s['params_rel_l2'] for s in per_step),
          'max_bn_stats_rel_l2': max(s['bn_stats_rel_l2'] for s in per_step),
          'running_var_rel_gap_to_unbiased': unbiased_gap,
          'seconds_reference': reference_seconds, 'seconds_resnet_jax_incl_compile': jax_seconds,
          'per_step': per_step},
  }


def float64_gradient_check(name: str, case: tp.Case, init: str, workdir: str) -> dict:
  """How far each float32 first-step gradient is from torch's float64 one: where both are far, float32 itself
  limits the agreement (the full ResNet-50 at 32x32). resnet_jax's gradient is read off its first update:
  g = (p0 - p1) / lr - wd * p0 (momentum is inert on the first step)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  run = tp.JaxRun(dataclasses.replace(case, steps=1), workdir)
  state_dict = reference_state_dict(case, run, init)
  plan = run.batch_plan(1)
  grads = {}
  for dtype in (torch.float32, torch.float64):
    model = torch_reference.create_model(case.model, int(run.experiment.num_classes), run.image_shape[-1],
                                         case.stage_sizes)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    model = model.to(dtype).train()
    idx = plan['indices'][0]
    x = torch_reference.augment(run.images[idx], run.mean, run.std, plan['offsets'][0], plan['flip'][0],
                                case.crop_padding).to(dtype)
    F.cross_entropy(model(x), torch.from_numpy(run.labels[idx])).backward()
    grads[str(dtype)] = {n: p.grad.double().numpy() for n, p in model.named_parameters()}
  final = run.train(state_dict, record=False)['final']
  names = sorted(grads['torch.float64'])
  exact = np.concatenate([grads['torch.float64'][n].ravel() for n in names])
  ours = np.concatenate([((state_dict[n].astype(np.float64) - final[n]) / case.base_lr
                          - case.weight_decay * state_dict[n].astype(np.float64)).ravel() for n in names])
  torch32 = np.concatenate([grads['torch.float32'][n].ravel() for n in names])
  return {'case': name, 'init': init, 'gradient_norm_float64': float(np.linalg.norm(exact)),
          'torch_float32_vs_float64': tp.relative_distance(torch32, exact),
          'resnet_jax_float32_vs_float64': tp.relative_distance(ours, exact),
          'resnet_jax_vs_torch_float32': tp.relative_distance(ours, torch32)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default=','.join(tp.CASES), help=f'of {", ".join(tp.LIVE_CASES)}')
  parser.add_argument('--init', choices=['golden', 'torch'], default='golden')
  parser.add_argument('--write', action='store_true', help='write tests/golden/training/CASE.json')
  parser.add_argument('--results', help='append the comparison (JSON lines) here')
  parser.add_argument('--kernels', default='fast',
                      help="resnet_jax's config.model.kernels ('autodiff_bn': two-pass BN statistics, autodiff)")
  parser.add_argument('--float64_gradient', action='store_true',
                      help="instead: each float32 first-step gradient's distance to torch's float64 one")
  args = parser.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  if args.kernels != 'fast':
    base_config = tp.make_config

    def make_config(case, dataset_name):
      config = base_config(case, dataset_name)
      config.model.kernels = args.kernels
      return config
    tp.make_config = make_config
  for name in args.cases.split(','):
    if args.float64_gradient:
      with tempfile.TemporaryDirectory() as workdir:
        check = float64_gradient_check(name, tp.LIVE_CASES[name], args.init, workdir)
      check['kernels'] = args.kernels
      print(json.dumps(check), flush=True)
      if args.results:
        with open(args.results, 'a') as f:
          f.write(json.dumps({'float64_gradient': check}) + '\n')
      continue
    with tempfile.TemporaryDirectory() as workdir:
      result = run_case(name, tp.LIVE_CASES[name], args.init, workdir)
    result['machine'] = {'platform': platform.platform(), 'processor': platform.machine(),
                         'jax': jax.__version__, 'torch': torch.__version__, 'devices': len(jax.devices()),
                         'date': time.strftime('%Y-%m-%d')}
    m = result['measured']
    print(f"{name} ({args.init} init): max loss rel diff {m['max_loss_rel_diff']:.2e}, final params rel L2 "
          f"{m['final_params_rel_l2']:.2e}, final BN stats rel L2 {m['final_bn_stats_rel_l2']:.2e} "
          f"(max over steps {m['max_params_rel_l2']:.2e} / {m['max_bn_stats_rel_l2']:.2e})"
          + (f"; unbiased vs biased running var: {m['running_var_rel_gap_to_unbiased']:.2e}"
             if m['running_var_rel_gap_to_unbiased'] is not None else ''), flush=True)
    if args.write:
      os.makedirs(tp.GOLDEN_DIR, exist_ok=True)
      golden = dict(result)
      golden['measured'] = {k: v for k, v in result['measured'].items() if k != 'per_step'}
      with open(os.path.join(tp.GOLDEN_DIR, f'{name}.json'), 'w') as f:
        json.dump(golden, f, indent=None, separators=(',', ':'))
        f.write('\n')
    if args.results:
      with open(args.results, 'a') as f:
        f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  main()
