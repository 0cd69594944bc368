"""Every module, file, function and class the README and docs/ name in code exists.

The names are taken from inline code (`...`) and fenced code blocks of README.md and docs/*.md:
  - dotted names `resnet_jax.a.b[.attr]`: the module is found, then each attribute is looked up with getattr;
  - `from resnet_jax.x import a, b`: each imported name exists;
  - short dotted names `module.attr` whose first part is a module of the package (`checkpoints.load`,
    `units.ORDERS`) or one of its classes (`ResNet.unit_width`): the attribute exists;
  - a call `name(` whose name is not a Python builtin: a function, class or method of that name is defined
    somewhere in the package;
  - repository paths (`configs/cifar.py`, `models/layers.py`, `benchmarks/results/cpu_input.jsonl`): the file or
    folder exists; `configs/F.py:ROW` names a row of that config's ROWS;
  - `create_model('name'`: a registry name;
  - `test_name`: a test function of that name exists under tests/.
A renamed function, moved file or removed row fails here, naming the document and the stale name. Placeholders
(upper-case words such as `configs/X.py`, `WORKDIR`, `ROW`), workdir outputs (`metrics.jsonl`), run folders
(`runs/...`), shell options and config fields (`config.a.b`, which name config entries, not modules) are not
checked. The test never imports a command-line module (their absl flags would collide): those are only looked up.
"""

from __future__ import annotations

import ast
import builtins
import functools
import glob
import importlib
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'resnet_jax')
DOCUMENTS = ['README.md'] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))

# Files a run writes into its workdir (or a reproduce/benchmark output directory): named, but not in the repository.
OUTPUT_FILES = {'config.json', 'metrics.jsonl', 'eval_results.jsonl', 'curves.png', 'results.md', 'results.csv',
                'reproduce.json', 'analysis.json', 'lesion.png', 'paths.png', 'propagation.png', 'setup.py',
                'export.json', 'config_history.jsonl'}
CHECKED_EXTENSIONS = ('py', 'md', 'ipynb', 'cfg', 'toml', 'sh', 'json', 'jsonl', 'npz', 'log')
TOP_DIRS = ('resnet_jax', 'configs', 'tests', 'benchmarks', 'notebooks', 'docs')
NOT_MODULES = {'config'}  # `config.a.b` names config fields far more often than the module resnet_jax.config

FENCE = re.compile(r'^```[^\n]*\n(.*?)^```', re.M | re.S)
INLINE = re.compile(r'`([^`\n]+)`')
DOTTED = re.compile(r'(?<![\w./-])(resnet_jax(?:\.[A-Za-z_]\w*)+)')
FROM_IMPORT = re.compile(r'^\s*from\s+(resnet_jax(?:\.\w+)*)\s+import\s+(\([\w\s,]+\)|[ \t\w,]+)', re.M)
SHORT_DOTTED = re.compile(r'(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?![\w])')
CALL = re.compile(r'(?<![\w.])([A-Za-z_]\w*)\(')
PATH = re.compile(r'(?<![\w.$/:-])((?:[\w.*-]+/)+[\w.*-]+)(?::(\w+))?')  # not after npz: / folder:
BARE_FILE = re.compile(r'(?<![\w./-])([\w*-]+\.(?:' + '|'.join(CHECKED_EXTENSIONS) + r'))(?![\w/])')
REGISTRY_NAME = re.compile(r"create_model\(\s*'(\w+)'")
TEST_NAME = re.compile(r'(?<![\w./])(test_\w+)(?![\w./])')


@functools.lru_cache(None)
def read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def code_of(text: str) -> list[str]:
  """The fenced blocks, then the inline code spans of the prose outside them."""
  blocks = FENCE.findall(text)
  prose = FENCE.sub('', text)
  return blocks + INLINE.findall(prose)


def is_placeholder(token: str) -> bool:
  """`configs/X.py`, `PATH_train.npz`, `ROOT/<split>`, `WORKDIR/...`: an upper-case word or <...> stands for a name."""
  return any(re.match(r'^[A-Z][A-Z0-9]*(_|$)', part) or part.startswith('<')
             for part in re.split(r'[/.:\[\]]', token) if part)


# ---------------------------------------------------------------------------------------------- the package


@functools.lru_cache(None)
def package_modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of resnet_jax (found on disk, nothing imported)."""
  modules = {}
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
    modules[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return modules


@functools.lru_cache(None)
def cli_modules() -> frozenset[str]:
  """Modules that define absl flags: importing two of them in one process fails, so none is imported."""
  return frozenset(name for name, path in package_modules().items() if 'flags.DEFINE_' in read(path))


@functools.lru_cache(None)
def definitions() -> tuple[dict[str, set[str]], set[str]]:
  """(class name -> modules defining it, every function, method, class and field name of the package), by ast."""
  classes, names = {}, set()
  for module, path in package_modules().items():
    tree = ast.parse(read(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.ClassDef):
        classes.setdefault(node.name, set()).add(module)
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        names.add(node.name)
      if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):  # a dataclass field (read_fn)
        names.add(node.target.id)
  return classes, names


@functools.lru_cache(None)
def top_level_names(module: str) -> frozenset[str]:
  """What a module defines or imports at its top level (read with ast: for modules that are not imported)."""
  names = set()
  for node in ast.parse(read(package_modules()[module])).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((alias.asname or alias.name).split('.')[0] for alias in node.names)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(target.id for target in targets if isinstance(target, ast.Name))
  return frozenset(names)


@functools.lru_cache(None)
def defined_tests() -> frozenset[str]:
  found = set()
  for path in glob.glob(os.path.join(REPO, 'tests', '**', '*.py'), recursive=True):
    found.update(re.findall(r'^\s*def (test_\w+)', read(path), re.M))
  return frozenset(found)


def is_package_string(name: str) -> bool:
  """Whether the package uses `name` as a string ('test_accuracy': a metric name, not a test)."""
  return any(f"'{name}'" in read(path) for path in package_modules().values())


def short_module_names() -> dict[str, str]:
  """Last component -> full name, for the components that name exactly one module."""
  seen = {}
  for name in package_modules():
    seen.setdefault(name.rsplit('.', 1)[-1], []).append(name)
  return {short: full[0] for short, full in seen.items() if len(full) == 1 and short not in NOT_MODULES}


def resolve(dotted: str) -> str | None:
  """None when `dotted` (a module, optionally followed by attributes) exists, else what is missing."""
  parts = dotted.split('.')
  modules = package_modules()
  for cut in range(len(parts), 0, -1):
    module = '.'.join(parts[:cut])
    if module in modules:
      break
  else:
    return f'no module {dotted}'
  attributes = parts[cut:]
  if not attributes:
    return None
  if module in cli_modules():
    return None if attributes[0] in top_level_names(module) else f'{module} defines no {attributes[0]}'
  obj = importlib.import_module(module)
  for i, attribute in enumerate(attributes):
    if not hasattr(obj, attribute):
      # A dataclass / Flax module field is not a class attribute when it has no default.
      fields = getattr(obj, '__dataclass_fields__', {}) or getattr(obj, '__annotations__', {})
      if attribute in fields:
        return None
      return f"{'.'.join([module] + attributes[:i])} has no attribute {attribute!r}"
    obj = getattr(obj, attribute)
  return None


# ---------------------------------------------------------------------------------------------- the checks


def problems_in(code: str) -> list[str]:
  problems = []
  classes, defined = definitions()
  shorts = short_module_names()

  for dotted in DOTTED.findall(code):
    dotted = dotted.rstrip('.')
    if dotted.split('.')[-1] in CHECKED_EXTENSIONS:
      continue
    if (problem := resolve(dotted)):
      problems.append(problem)

  for module, names in FROM_IMPORT.findall(code):
    for name in (n.strip() for n in names.strip('()').replace('\n', ',').split(',')):
      if name and name != 'as' and (problem := resolve(f'{module}.{name}')):
        problems.append(f'from {module} import {name}: {problem}')

  for first, second in SHORT_DOTTED.findall(code):
    if second in CHECKED_EXTENSIONS or first == 'resnet_jax':
      continue
    if first in shorts:
      if (problem := resolve(f'{shorts[first]}.{second}')):
        problems.append(f'{first}.{second}: {problem}')
    elif first in classes and len(classes[first]) == 1 and first[0].isupper():
      if (problem := resolve(f'{next(iter(classes[first]))}.{first}.{second}')):
        problems.append(f'{first}.{second}: {problem}')

  for name in CALL.findall(code):
    if (name not in defined and not hasattr(builtins, name) and name.islower() and '_' in name
        and not name.startswith('_') and name not in NON_PACKAGE_CALLS):
      problems.append(f'{name}(): defined nowhere in resnet_jax')

  for path, row in PATH.findall(code):
    problems += path_problems(path, row)

  for name in BARE_FILE.findall(code):
    if name in OUTPUT_FILES or is_placeholder(name) or PATH.search(name):
      continue
    hits = glob.glob(os.path.join(REPO, '**', name), recursive=True)
    if not hits:
      problems.append(f'{name}: no such file in the repository')

  for name in TEST_NAME.findall(code):
    if name not in defined_tests() and not is_package_string(name):  # `test_accuracy` is a metric
      problems.append(f'{name}: no such test in tests/')

  if REGISTRY_NAME.search(code):
    from resnet_jax.models import list_models
    known = set(list_models())
    problems += [f"create_model('{n}'): not a registry name" for n in REGISTRY_NAME.findall(code) if n not in known]
  return problems


# Calls the documents make to other libraries (NumPy, JAX, Flax, the shell...): never the package's.
NON_PACKAGE_CALLS = {'make_array_from_process_local_data', 'conv_general_dilated', 'value_and_grad', 'eval_shape',
                     'data_source', 'apply_updates', 'new_code_cell', 'read_file', 'is_zipfile', 'fold_in', 'pipe_file'}


def path_problems(path: str, row: str) -> list[str]:
  """A path relative to the repository (or to resnet_jax/ as in `models/layers.py`), with an optional :ROW."""
  top = path.split('/')[0]
  if is_placeholder(path) or top.startswith(('runs', 'gs:', 'http', '~', '.')) or '://' in path:
    return []
  if top not in TOP_DIRS and (not os.path.exists(os.path.join(PACKAGE, top)) or '.' not in path.split('/')[-1]):
    return []  # not a repository path (a tensor shape, 'a/b' prose, a workdir, a data folder `data/flowers`)
  candidates = [os.path.join(REPO, path), os.path.join(PACKAGE, path)]
  if not any(glob.glob(c.rstrip('/')) for c in candidates):
    stem, _, attribute = path.rpartition('.')
    if attribute and attribute not in CHECKED_EXTENSIONS and os.path.isfile(os.path.join(PACKAGE, stem + '.py')):
      # `models/layers.batch_norm_train`: an attribute of the module at that path
      problem = resolve('resnet_jax.' + stem.replace('/', '.') + '.' + attribute)
      return [f'{path}: {problem}'] if problem else []
    return [f'{path}: no such file or folder']
  if row and path.startswith('configs/') and path.endswith('.py') and not row.isupper():
    module = importlib.import_module('configs.' + os.path.basename(path)[:-3])
    if row not in getattr(module, 'ROWS', {}):
      return [f'{path}:{row}: no row {row!r} in {path} ROWS']
  return []


@pytest.mark.parametrize('document', DOCUMENTS)
def test_every_name_in_the_document_exists(document):
  text = read(os.path.join(REPO, document))
  problems = []
  for code in code_of(text):
    problems += problems_in(code)
  assert not sorted(set(problems)), f'{document} names what does not exist:\n  ' + '\n  '.join(sorted(set(problems)))


# ---------------------------------------------------------------------------------------------- the checker


@pytest.mark.parametrize('code, stale', [
    ('`resnet_jax.models.units.ORDERZ`', "no attribute 'ORDERZ'"),
    ('`resnet_jax.modelz.units`', "no attribute 'modelz'"),
    ('```python\nfrom resnet_jax.models import create_model, list_modelz\n```', 'list_modelz'),
    ('`checkpoints.lood(workdir)`', "no attribute 'lood'"),
    ('`ResNet.unit_widths`', "no attribute 'unit_widths'"),
    ('`models/layerz.py`', 'models/layerz.py: no such file'),
    ('`models/layers.zero_pad_shortcutz`', "no attribute 'zero_pad_shortcutz'"),
    ('`configs/cifar.py:resnet111`', "no row 'resnet111'"),
    ("`create_model('resnet19')`", 'not a registry name'),
    ('`single_unit_lesionz(model, ...)`', 'single_unit_lesionz(): defined nowhere'),
    ('`cpu_input_missing.jsonl`', 'no such file in the repository'),
    ('`test_every_paper_row_builds_its_modelz`', 'no such test'),
    ('`resnet_jax.reproduce.aggregat`', 'resnet_jax.reproduce defines no aggregat'),  # a CLI: read, not imported
])
def test_the_check_catches_a_stale_name(code, stale):
  problems = [p for block in code_of(code) for p in problems_in(block)]
  assert any(stale in p for p in problems), problems


def test_the_check_tolerates_shell_commands_placeholders_and_config_fields():
  text = """```bash
python -m resnet_jax.main --config configs/cifar.py:resnet110 --workdir runs/gate \\
    --config.model.shortcut=exclusive_gate --config.model.gate_bias_init=-6
python -m resnet_jax.main --config configs/F.py[:ARG] --workdir DIR  # and ROOT/<split>/<class>/*.jpg
pip install -e ".[test]" && python -m pytest -n 0 tests/test_docs.py -q
```
`config.dataset.name`, `WORKDIR/metrics.jsonl`, `configs/cifar.py:ROW`, `benchmarks/results/h100_*`, `np.zeros(3)`,
`run.model`, `list_models()`, `ResNet.unit_width`, `resnet_jax.models.layers.KERNELS`, `layers.KERNELS`,
`resnet_jax.reproduce.aggregate`, `test_accuracy`, `test_npz_source`, `read_fn(indices)`, `data/flowers`,
`--config.dataset.name=npz:data/my_task`, `folder:data/flowers`, `models/layers.zero_pad_shortcut`."""
  assert [p for block in code_of(text) for p in problems_in(block)] == []
