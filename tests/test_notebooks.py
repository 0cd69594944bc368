"""The notebooks run end to end in a Jupyter kernel (nbclient), with the small settings of their parameter cell.

The small settings reach a notebook through the environment variables its parameter cell reads, never by
editing its code. A drift in the notebook fails here instead of silently running the full-size version: before
running when the parameter cell no longer reads a setting, after it when a setting did not take effect. Any cell
error fails the test (nbclient raises CellExecutionError). Each notebook gets a report cell appended, run in the
same kernel, that prints what it computed as JSON.
"""

import glob
import json
import math
import os

import nbclient
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, 'notebooks')
DIGITS_TRAIN, DIGITS_TEST, QUICKSTART_BATCH = 1433, 364, 64  # resnet_jax.data.digits, configs/quickstart.py
ONE_EPOCH = math.ceil(DIGITS_TRAIN / QUICKSTART_BATCH)
TINY = {'RESNET_JAX_NB_EPOCHS': '1', 'RESNET_JAX_NB_STAGE_WIDTHS': '8,8,8'}  # one epoch of a narrow ResNet-20


def notebook_path(name: str) -> str:
  """notebooks/NAME.ipynb, or its numbered form NN_NAME.ipynb (the quickstart may carry a number)."""
  found = sorted(glob.glob(os.path.join(NOTEBOOKS, f'{name}.ipynb')) +
                 glob.glob(os.path.join(NOTEBOOKS, f'[0-9][0-9]_{name}.ipynb')))
  assert len(found) == 1, f'expected one notebook named {name}, found {found}'
  return found[0]


def run_notebook(name: str, settings: dict, report: str, monkeypatch) -> nbformat.NotebookNode:
  """Executes the notebook with `settings` in the environment and `report` appended; returns it executed."""
  notebook = nbformat.read(notebook_path(name), as_version=4)
  code = ''.join(cell.source for cell in notebook.cells if cell.cell_type == 'code')
  for variable, value in settings.items():
    assert f"os.environ.get('{variable}'" in code, f'the parameter cell no longer reads {variable}'  # fail early
    monkeypatch.setenv(variable, value)
  notebook.cells.append(nbformat.v4.new_code_cell(report))
  # The kernel inherits this process's environment (conftest's CPU devices and TFDS dir); cwd is the repository.
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()
  return notebook


def reported(notebook) -> dict:
  return json.loads(notebook.cells[-1].outputs[0]['text'])


def images_shown(notebook) -> int:
  return sum('image/png' in output.get('data', {}) for cell in notebook.cells[:-1]
             for output in cell.get('outputs', []))


def check_tiny_run(workdir) -> None:
  """The small settings took effect: one epoch of the narrow network, written where the test asked."""
  with open(workdir / 'config.json') as f:
    saved = json.load(f)
  assert saved['total_epochs'] == 1 and tuple(saved['model']['stage_widths']) == (8, 8, 8)
  with open(workdir / 'metrics.jsonl') as f:
    assert max(json.loads(line)['step'] for line in f) == ONE_EPOCH


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(NOTEBOOKS, '*.ipynb'))),
                         ids=lambda path: os.path.basename(path))
def test_notebooks_are_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source


def test_every_notebook_is_run_here():
  tested = {'quickstart', '02_checkpoint_eval', '03_paper_figures', '04_lesion_paths_propagation',
            '05_pretrained_and_finetune'}
  names = {os.path.basename(path)[:-len('.ipynb')] for path in glob.glob(os.path.join(NOTEBOOKS, '*.ipynb'))}
  assert {name.removeprefix('01_') for name in names} <= tested, 'a notebook without a test here'


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  report = """import json
print(json.dumps({'test_accuracy': float(result['test_accuracy']), 'confusion_total': int(confusion.sum()),
                  'lesioned_units': len(study.accuracies), 'checkpoint_step': int(run.step)}))"""
  notebook = run_notebook('quickstart', {'RESNET_JAX_NB_WORKDIR': str(workdir), **TINY}, report, monkeypatch)

  check_tiny_run(workdir)
  result = reported(notebook)
  assert result['checkpoint_step'] == ONE_EPOCH
  assert 0.0 <= result['test_accuracy'] <= 1.0
  assert result['confusion_total'] == DIGITS_TEST
  assert result['lesioned_units'] == 9  # ResNet-20: 3 stages x 3 units
  assert images_shown(notebook) == 1  # curves.png


@pytest.fixture(scope='module')
def checkpoint_eval(tmp_path_factory):
  """notebooks/02 run on an empty workdir (so it trains the tiny run first): (executed notebook, workdir)."""
  workdir = tmp_path_factory.mktemp('checkpoint_eval') / 'run'
  report = """import json
print(json.dumps({'checkpoint_step': int(run.step), 'test_accuracy': float(result['test_accuracy']),
                  'predict_accuracy': float(np.mean(predictions == labels)), 'confusion_total': int(confusion.sum()),
                  'grid': len(grid), 'wrong': len(wrong), 'mistakes': [int(i) for i in mistakes],
                  'confidence': [float(confidence[i]) for i in mistakes]}))"""
  settings = {'RESNET_JAX_NB_WORKDIR': str(workdir), **TINY, 'RESNET_JAX_NB_GRID': '16',
              'RESNET_JAX_NB_MISTAKES': '4'}
  with pytest.MonkeyPatch.context() as monkeypatch:
    return run_notebook('02_checkpoint_eval', settings, report, monkeypatch), workdir


def test_checkpoint_eval_notebook_trains_then_evaluates(checkpoint_eval):
  notebook, workdir = checkpoint_eval
  check_tiny_run(workdir)  # no checkpoint in the workdir: the notebook trained one
  result = reported(notebook)
  assert result['checkpoint_step'] == ONE_EPOCH
  with open(workdir / 'eval_results.jsonl') as f:
    assert [json.loads(line)['step'] for line in f] == [ONE_EPOCH]
  # predict and the exact evaluation agree on the whole test split.
  assert result['confusion_total'] == DIGITS_TEST
  assert abs(result['predict_accuracy'] - result['test_accuracy']) < 1e-6
  assert result['grid'] == 16
  assert len(result['mistakes']) == min(4, result['wrong'])
  assert result['confidence'] == sorted(result['confidence'], reverse=True)
  assert images_shown(notebook) == 2 + (result['wrong'] > 0)  # grid, confusion matrix, mistakes


def test_lesion_paths_propagation_notebook_runs_on_a_given_workdir(checkpoint_eval, monkeypatch):
  workdir = checkpoint_eval[1]  # trained by notebook 02: this one loads it and trains nothing
  before = os.path.getmtime(workdir / 'metrics.jsonl')
  report = """import json
print(json.dumps({'examples': len(labels), 'units': len(study.accuracies),
                  'random': {str(k): len(v) for k, v in random_lesions.items()},
                  'path_samples': gradients.num_samples, 'lengths': len(gradients.lengths),
                  'propagation': {label: len(result.grad_norm) for label, result in curves.items()}}))"""
  settings = {'RESNET_JAX_NB_WORKDIR': str(workdir), **TINY, 'RESNET_JAX_NB_EXAMPLES': '128',
              'RESNET_JAX_NB_REMOVE': '1,3', 'RESNET_JAX_NB_SAMPLES': '2', 'RESNET_JAX_NB_SHORTCUTS': 'none'}
  notebook = run_notebook('04_lesion_paths_propagation', settings, report, monkeypatch)

  check_tiny_run(workdir)
  assert os.path.getmtime(workdir / 'metrics.jsonl') == before  # nothing retrained
  result = reported(notebook)
  assert result['examples'] == 128
  assert result['units'] == 9
  assert result['random'] == {'1': 2, '3': 2}
  assert result['path_samples'] == 2 and result['lengths'] == 10  # paths of length 0..9
  # He et al. 2016: the trained network, and the plain variant at initialisation (one gradient norm per unit)
  assert result['propagation'] == {f'trained (step {ONE_EPOCH})': 9, 'none, initialisation': 9}
  assert images_shown(notebook) == 4


def test_paper_figures_notebook_trains_seeds_and_draws_them_with_a_given_run(checkpoint_eval, tmp_path,
                                                                            monkeypatch):
  given = str(checkpoint_eval[1])  # notebook 02's run: drawn and counted beside the notebook's own seeds
  report = """import json
print(json.dumps({'directories': directories, 'figure': figure,
                  'rows': [[s['row'], s['runs'], s['finished'], s['total']] for s in summaries]}))"""
  root = tmp_path / 'figures'
  settings = {'RESNET_JAX_NB_ROOT': str(root), 'RESNET_JAX_NB_MODELS': 'cifar_preact_resnet20',
              'RESNET_JAX_NB_SEEDS': '2', 'RESNET_JAX_NB_WORKDIRS': given, **TINY}
  notebook = run_notebook('03_paper_figures', settings, report, monkeypatch)

  for seed in (0, 1):
    check_tiny_run(root / 'cifar_preact_resnet20' / f'seed_{seed}')
  result = reported(notebook)
  assert result['directories'] == [str(root / 'cifar_preact_resnet20'), given]
  assert os.path.getsize(result['figure']) > 5000 and images_shown(notebook) == 1
  assert result['rows'] == [['cifar_preact_resnet20', 3, 3, 3]]  # two seeds and the given run: one model
  assert any('text/markdown' in output.get('data', {}) for output in notebook.cells[-2].outputs)


def test_pretrained_and_finetune_notebook_runs(tmp_path, monkeypatch):
  report = """import json
print(json.dumps({'model': MODEL, 'size': SIZE, 'relative_error': relative_error, 'logits': list(logits.shape),
                  'maps': [list(m.shape) for m in maps], 'strides': [i['reduction'] for i in backbone.feature_info()],
                  'pooled': list(pooled.shape), 'changed': changed}))"""
  # 193 pixels, not the default 224: odd sizes are where XLA's and torch's padding would differ.
  settings = {'RESNET_JAX_NB_MODEL': 'resnet18', 'RESNET_JAX_NB_SIZE': '193',
              'RESNET_JAX_NB_FINETUNE_DIR': str(tmp_path / 'finetune'), 'RESNET_JAX_NB_FINETUNE_EPOCHS': '0.25'}
  result = reported(run_notebook('05_pretrained_and_finetune', settings, report, monkeypatch))

  assert result['model'] == 'resnet18' and result['size'] == 193
  assert result['logits'] == [2, 1000] and result['relative_error'] <= 1e-5  # tests/golden/torchvision/resnet18
  assert result['maps'] == [[2, 49, 49, 64], [2, 25, 25, 128], [2, 13, 13, 256], [2, 7, 7, 512]]
  assert result['strides'] == [4, 8, 16, 32] and result['pooled'] == [2, 512]
  # Fine-tuned for a quarter epoch with everything but the new head frozen: only the head changed.
  run = tmp_path / 'finetune' / 'run'
  with open(run / 'config.json') as f:
    saved = json.load(f)
  assert saved['total_epochs'] == 0.25 and saved['model']['name'] == 'resnet18'
  assert saved['init_from'] == str(tmp_path / 'finetune' / 'resnet18_converted')
  with open(run / 'metrics.jsonl') as f:
    assert max(json.loads(line)['step'] for line in f) == math.ceil(0.25 * DIGITS_TRAIN / QUICKSTART_BATCH)
  assert result['changed'] == {'params': ["['head']"], 'batch_stats': []}
