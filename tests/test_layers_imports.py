"""The architecture's import rules (setup.cfg [importlinter]), and that they can fail; stale references."""

import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The script beside this interpreter (a virtual environment's bin/), else the one on PATH.
LINT_IMPORTS = shutil.which('lint-imports', path=os.path.dirname(sys.executable)) or shutil.which('lint-imports')


def _lint_imports(cwd):
  # The config file is named explicitly (the positional form of the deprecated --config); no cache directory is
  # left in the checkout. Run from `cwd`, which lint-imports puts first on sys.path: that copy of resnet_jax is
  # the one analysed. COLUMNS: one line per contract in the report.
  return subprocess.run([LINT_IMPORTS, '--no-cache', '--no-logo', 'setup.cfg'], cwd=cwd, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'COLUMNS': '1000'})


def test_the_package_keeps_its_import_contracts():
  result = _lint_imports(REPO)
  assert result.returncode == 0, result.stdout + result.stderr


def test_the_contracts_fail_on_forbidden_imports(tmp_path):
  shutil.copy(os.path.join(REPO, 'setup.cfg'), tmp_path)
  package = tmp_path / 'resnet_jax'
  shutil.copytree(os.path.join(REPO, 'resnet_jax'), package, ignore=shutil.ignore_patterns('__pycache__', '*.npz'))
  for module, forbidden in (('checkpoints.py', 'from resnet_jax import train'),
                            ('models/__init__.py', 'from resnet_jax.data import pipelines'),
                            ('parallel.py', 'from resnet_jax import main')):
    path = package / module
    path.write_text(f'{forbidden}  # a deliberate violation\n' + path.read_text())
  (package / 'undeclared.py').write_text('"""A new module placed in no layer."""\n')
  result = _lint_imports(tmp_path)
  output = result.stdout + result.stderr
  assert result.returncode != 0, output
  broken = [line for line in output.splitlines() if line.endswith(' BROKEN')]
  for contract in ('Layers: CLIs', 'Models import no data', 'Checkpoints do not import train',
                   'No library module imports a command-line module', 'No import cycles'):
    assert any(line.startswith(contract) for line in broken), (contract, output)
  assert 'resnet_jax.undeclared' in output  # exhaustive: every module of the package is in a layer


def test_the_source_cites_only_documents_in_the_repository():
  """A docstring or comment naming a .md file names one that the repository holds (not a local copy elsewhere)."""
  stale = []
  for root, _, files in os.walk(os.path.join(REPO, 'resnet_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        for cited in re.findall(r'[\w./-]*\w\.md\b', open(path).read()):
          if os.path.isabs(cited) or not os.path.exists(os.path.join(REPO, cited)):
            stale.append(f'{os.path.relpath(path, REPO)}: {cited}')
  assert not stale, stale
