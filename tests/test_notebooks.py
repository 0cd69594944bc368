"""The notebooks run end to end in a Jupyter kernel (nbclient), with the small settings of their parameter cell.

The small settings reach the notebook through the environment variables its parameter cell reads, never by
editing its code. A drift in the notebook fails here instead of silently running the full-size training: before
training when the parameter cell no longer reads a setting, after it when a setting did not take effect.
"""

import json
import math
import os

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'notebooks', 'quickstart.ipynb')
DIGITS_TRAIN, DIGITS_TEST, QUICKSTART_BATCH = 1433, 364, 64  # resnet_jax.data.digits, configs/quickstart.py

# Appended to the notebook: reports what it computed, in the same kernel.
REPORT_CELL = """import json
print(json.dumps({'test_accuracy': float(result['test_accuracy']), 'confusion_total': int(confusion.sum()),
                  'lesioned_units': len(study.accuracies), 'checkpoint_step': int(run.step)}))"""


def test_notebooks_are_stored_without_outputs():
  notebook = nbformat.read(QUICKSTART, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, cell.source


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  settings = {'RESNET_JAX_NB_WORKDIR': str(workdir), 'RESNET_JAX_NB_EPOCHS': '1',
              'RESNET_JAX_NB_STAGE_WIDTHS': '8,8,8'}
  notebook = nbformat.read(QUICKSTART, as_version=4)
  code = ''.join(cell.source for cell in notebook.cells if cell.cell_type == 'code')
  for name, value in settings.items():
    assert f"os.environ.get('{name}'" in code, f'the parameter cell no longer reads {name}'  # fail before training
    monkeypatch.setenv(name, value)
  notebook.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
  # The kernel inherits this process's environment (conftest's CPU devices and TFDS dir); cwd is the repository.
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': REPO}}).execute()

  # The small settings took effect: one epoch of the narrow network, written where the test asked.
  with open(workdir / 'config.json') as f:
    saved = json.load(f)
  assert saved['total_epochs'] == 1 and tuple(saved['model']['stage_widths']) == (8, 8, 8)
  one_epoch = math.ceil(DIGITS_TRAIN / QUICKSTART_BATCH)
  with open(workdir / 'metrics.jsonl') as f:
    assert max(json.loads(line)['step'] for line in f) == one_epoch

  report = json.loads(notebook.cells[-1].outputs[0]['text'])
  assert report['checkpoint_step'] == one_epoch
  assert 0.0 <= report['test_accuracy'] <= 1.0
  assert report['confusion_total'] == DIGITS_TEST
  assert report['lesioned_units'] == 9  # ResNet-20: 3 stages x 3 units
  shown = [output for cell in notebook.cells for output in cell.get('outputs', [])
           if 'image/png' in output.get('data', {})]
  assert len(shown) == 1  # curves.png
