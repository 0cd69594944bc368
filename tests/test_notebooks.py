"""The notebooks run: their code cells are executed in order (with a one-epoch training run)."""

import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_cells(path):
  with open(path) as f:
    notebook = json.load(f)
  assert notebook['nbformat'] == 4
  return [''.join(cell['source']) for cell in notebook['cells'] if cell['cell_type'] == 'code']


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  shown = []
  # IPython's display is the notebook front end's business: record what the notebook shows instead.
  namespace = {'Image': lambda path: path, 'display': shown.append}
  for source in _code_cells(os.path.join(REPO, 'notebooks', 'quickstart.ipynb')):
    source = source.replace('from IPython.display import Image, display\n', '')
    source = source.replace("os.path.abspath('runs/notebook_quickstart')", repr(str(tmp_path / 'run')))
    source = source.replace('EPOCHS = 20', 'EPOCHS = 1')
    source = source.replace("[('total_epochs', str(EPOCHS))]",
                            "[('total_epochs', str(EPOCHS)), ('schedule.boundaries_epochs', 'None'), "
                            "('model.stage_widths', '(8,8,8)')]")
    exec(compile(source, 'notebook', 'exec'), namespace)  # pylint: disable=exec-used
  assert shown and shown[0].endswith('curves.png')
  assert 0.0 <= namespace['result']['test_accuracy'] <= 1.0
  assert namespace['confusion'].sum() == 364
  assert len(namespace['study'].accuracies) == 9  # ResNet-20: 3 stages x 3 units
