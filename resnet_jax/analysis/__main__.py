r"""Analyses of a trained run (Veit et al. 2016), from the command line.

  python -m resnet_jax.analysis --workdir runs/resnet110 [--study lesion,paths] [--limit 2000]
  python -m resnet_jax.analysis --workdir runs/preact164 --study propagation [--compare runs/r164] [--at_init]

lesion: the test accuracy with each residual unit removed (Fig. 3 / 4) and with k random units removed
  (Fig. 5(a)); paths: the path-length distribution and the input-gradient magnitude per path length
  (Fig. 6); propagation (He et al. 2016 Eq. 5): || d loss / d x_l || at the input of every residual unit
  against depth, of the checkpoint (or, with --at_init, of a freshly initialised network of the same config);
  --compare OTHER_WORKDIR draws both runs in one figure. Results go to WORKDIR/analysis/<study>.json and .png
  (propagation_compare.json / .png for a comparison), and a summary is printed.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from resnet_jax import checkpoints
from resnet_jax import storage
from resnet_jax import errors
from resnet_jax import parallel
from resnet_jax.analysis import lesion
from resnet_jax.analysis import paths
from resnet_jax.analysis import propagation
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.errors import UserError
from resnet_jax.models import num_residual_units

flags.DEFINE_string('workdir', None, 'A run directory with checkpoints (from python -m resnet_jax.main).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
flags.DEFINE_list('study', ['lesion', 'paths'], 'Which analyses: lesion, paths.')
flags.DEFINE_integer('limit', 2000, 'Evaluation examples to use (from the config\'s eval split).')
flags.DEFINE_list('remove', ['1', '2', '5', '10', '20'], 'Numbers of random units removed (Fig. 5(a)).')
flags.DEFINE_integer('samples', 10, 'Random draws per number of removed units / per path length.')
flags.DEFINE_integer('seed', 0, 'Seed of the random draws (and of --at_init).')
flags.DEFINE_string('compare', None, 'propagation: a second workdir drawn beside WORKDIR.')
flags.DEFINE_bool('at_init', False, 'propagation: a freshly initialised network of the run\'s config.')
FLAGS = flags.FLAGS

STUDIES = ('lesion', 'paths', 'propagation')


def eval_images(config, limit: int) -> tuple[np.ndarray, np.ndarray]:
  """Up to `limit` examples of the run's eval split as the model takes them (uint8, centre-cropped)."""
  config = config.copy_and_resolve_references()
  if config.input.get('eval_crop_mode') == 'ten':
    config.input.eval_crop_mode = 'center'  # one view per example
  dataset = config.dataset
  source = sources.open_split(dataset.name, dataset.eval_split, dataset.get('data_dir'))
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  images, labels = [], []
  for batch in pipelines.make_eval_batches(config, mesh, source, limit=limit):
    mask = np.asarray(batch['mask'])
    images.append(np.asarray(batch['image'])[mask])
    labels.append(np.asarray(batch['label'])[mask])
  return np.concatenate(images), np.concatenate(labels)


def lesion_study(run, images, labels, remove, samples, seed) -> dict:
  single = lesion.single_unit_lesions(run.model, run.variables, images, labels)
  num_units = num_residual_units(run.model)
  counts = sorted({count for count in remove if 0 < count <= num_units})
  random = lesion.random_unit_lesions(run.model, run.variables, images, labels, counts, num_samples=samples,
                                      seed=seed) if counts else {}
  return {
      'baseline_error': 1.0 - single.baseline_accuracy,
      'units': [{'index': unit.index, 'stage': unit.stage, 'position': unit.position,
                 'changes_shape': unit.changes_shape, 'error': 1.0 - float(accuracy)}
                for unit, accuracy in zip(single.units, single.accuracies)],
      'random_removal': {str(count): {'mean_error': float(1 - accuracies.mean()), 'std_error': float(accuracies.std()),
                                      'errors': [float(1 - accuracy) for accuracy in accuracies]}
                         for count, accuracies in random.items()},
  }


def path_study(run, images, labels, samples, seed) -> dict:
  result = paths.gradient_magnitude_by_path_length(run.model, run.variables, images, labels,
                                                   samples_per_length=samples, seed=seed)
  return {'lengths': result.lengths.tolist(), 'distribution': result.distribution.tolist(),
          'mean_grad_norm': result.mean_grad_norm.tolist(), 'std_grad_norm': result.std_grad_norm.tolist(),
          'total_gradient': result.total_gradient.tolist(), 'samples_per_length': samples}


def plot_lesion(result: dict, path: str) -> None:
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(11, 3.8))
  ax_unit, ax_k = fig.subplots(1, 2)
  errors = [100 * u['error'] for u in result['units']]
  colors = ['tab:red' if u['changes_shape'] else 'tab:blue' for u in result['units']]
  ax_unit.bar(range(len(errors)), errors, color=colors)
  ax_unit.axhline(100 * result['baseline_error'], color='k', linestyle='--', linewidth=1, label='no unit removed')
  # Named as the printed study names them, stage.unit from 1; every unit labelled up to 40, else each stage's
  # first unit and every fifth.
  labels = [f"{u['stage']}.{u['position']}" for u in result['units']]
  shown = [i for i, u in enumerate(result['units'])
           if len(labels) <= 40 or u['position'] == 1 or u['position'] % 5 == 0]
  ax_unit.set_xticks(shown, [labels[i] for i in shown], rotation=90 if len(shown) > 12 else 0, fontsize=7)
  ax_unit.set_xlabel('removed unit: stage.unit (red: changes shape)')
  ax_unit.set_ylabel('test error (%)')
  ax_unit.legend()
  counts = sorted(int(count) for count in result['random_removal'])
  if counts:
    means = [100 * result['random_removal'][str(count)]['mean_error'] for count in counts]
    stds = [100 * result['random_removal'][str(count)]['std_error'] for count in counts]
    ax_k.errorbar(counts, means, yerr=stds, marker='o', capsize=3)
  ax_k.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # a count of units
  ax_k.set_xlabel('units removed at random')
  ax_k.set_ylabel('test error (%)')
  for ax in (ax_unit, ax_k):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=110)


def plot_paths(result: dict, path: str) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(13, 3.6))
  axes = fig.subplots(1, 3)
  lengths = result['lengths']
  for ax, key, label in zip(axes, ('distribution', 'mean_grad_norm', 'total_gradient'),
                            ('fraction of paths', 'gradient magnitude per path', 'total gradient (normalised)')):
    ax.plot(lengths, result[key], marker='.')
    ax.set_xlabel('path length (residual units)')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[1].set_yscale('log')
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=110)


def propagation_study(run, images, labels, at_init: bool, seed: int) -> dict:
  variables = run.variables
  if at_init:
    variables = jax.jit(lambda rng: run.model.init(rng, images[:1], train=False))(jax.random.key(seed))
  result = propagation.gradient_by_unit(run.model, variables, images, labels)
  paper = run.config.get('paper') or {}
  label = paper.get('row') or run.config.model.name
  return {'label': f'{label} (initialisation)' if at_init else f'{label} (step {run.step})', 'at_init': at_init,
          'model': run.config.model.name, **propagation.to_json(result)}


def analyze(workdir: str, studies=STUDIES, step=None, limit: int = 2000, remove=(1, 2, 5, 10, 20),
            samples: int = 10, seed: int = 0, compare=None, at_init: bool = False) -> dict:
  """Runs the studies on a checkpoint of `workdir`; writes WORKDIR/analysis/<study>.json and .png."""
  unknown = [s for s in studies if s not in STUDIES]
  if unknown:
    raise UserError(f"unknown study {unknown[0]!r}; choose from {', '.join(STUDIES)}")
  if (compare or at_init) and 'propagation' not in studies:
    raise UserError('--compare and --at_init belong to --study propagation')
  run = checkpoints.load(workdir, step=step)
  if not hasattr(run.model.backbone, 'describe_units'):
    raise UserError(f"{run.config.model.name} has no residual units to analyse (DenseNet)")
  images, labels = eval_images(run.config, limit)
  out_dir = storage.make_dirs(storage.resolve(workdir) / 'analysis')  # its own folder: safe while a run trains
  results = {}
  if 'lesion' in studies:
    results['lesion'] = lesion_study(run, images, labels, remove, samples, seed)
    plot_lesion(results['lesion'], out_dir / 'lesion.png')
  if 'paths' in studies:
    results['paths'] = path_study(run, images, labels, samples, seed)
    plot_paths(results['paths'], out_dir / 'paths.png')
  if 'propagation' in studies:
    results['propagation'] = propagation_study(run, images, labels, at_init, seed)
    curves = {results['propagation']['label']: results['propagation']}
    if compare:
      other = checkpoints.load(compare)
      other_images, other_labels = eval_images(other.config, limit)
      other_result = propagation_study(other, other_images, other_labels, at_init, seed)
      if other_result['label'] in curves:
        other_result['label'] += f' [{os.path.basename(os.path.normpath(compare))}]'
      curves[other_result['label']] = other_result
      results['propagation_compare'] = {'workdirs': [workdir, compare], 'runs': list(curves.values())}
      propagation.plot(curves, out_dir / 'propagation_compare.png')
    propagation.plot({results['propagation']['label']: results['propagation']},
                     out_dir / 'propagation.png')
  for name, result in results.items():
    storage.write_text(out_dir / f'{name}.json',
                       json.dumps({'step': run.step, 'num_examples': int(len(labels)), **result}, indent=1))
  return results


def main(argv):
  if len(argv) > 1:
    errors.fail(f"unexpected arguments {' '.join(argv[1:])}")
  with errors.exit_on_error():
    if not FLAGS.workdir:
      raise UserError('--workdir is required')
    results = analyze(FLAGS.workdir, FLAGS.study, FLAGS.step, FLAGS.limit, [int(count) for count in FLAGS.remove],
                      FLAGS.samples, FLAGS.seed, FLAGS.compare, FLAGS.at_init)
  if 'lesion' in results:
    lesions = results['lesion']
    print(f"no unit removed: test error {100 * lesions['baseline_error']:.2f}%")
    for unit in lesions['units']:
      mark = '  (changes shape)' if unit['changes_shape'] else ''
      print(f"  remove stage {unit['stage']} unit {unit['position']:>3}: {100 * unit['error']:6.2f}%{mark}")
    for count, removal in lesions['random_removal'].items():
      print(f"  remove {count:>3} random units: {100 * removal['mean_error']:6.2f}% "
            f"+- {100 * removal['std_error']:.2f}")
  if 'paths' in results:
    gradients = results['paths']
    peak = int(np.argmax(gradients['total_gradient']))
    print(f"gradient: most of it through paths of length ~{gradients['lengths'][peak]} "
          f"(of {gradients['lengths'][-1]} units)")
  for result in results.get('propagation_compare', {}).get('runs', [results.get('propagation')]):
    if result:
      norms = [unit['grad_norm'] for unit in result['units']]
      print(f"{result['label']}: || d loss / d x_l || from {norms[0]:.3g} (unit 1) to {norms[-1]:.3g} "
            f"(unit {len(norms)}), ratio first/last {norms[0] / norms[-1]:.3g}")
  print(f'results in {storage.resolve(FLAGS.workdir) / "analysis"}')


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)  # Orbax's per-restore INFO lines are not for the terminal
  app.run(main)
