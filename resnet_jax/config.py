"""Loading experiment configs: `configs/F.py[:ARG]` files plus `--config.a.b=v` overrides.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict` (Flax/big_vision convention: every
config is a small diff of `configs/default.py`). Overrides are parsed here rather than by
`ml_collections.config_flags` so that every mistake (a missing file, an unknown field, a value of the wrong type)
becomes one `UserError` line that says what to do, instead of a traceback.

Fields are fixed by the config file, with one deliberate exception: `config.model` accepts new keys, because
every keyword of `resnet_jax.models.create_model` is a model option (`--config.model.shortcut=exclusive_gate`).
Model options are checked by the model registry before anything is compiled.

Durations follow big_vision: a duration `X` is given as exactly one of `X_steps` or `X_epochs`
(see `resolve_steps`).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
import sys
import traceback
from typing import Any, Optional, Sequence

from absl import flags
import ml_collections

from resnet_jax import errors
from resnet_jax.errors import UserError

# Sub-configs whose keys are open: new keys are accepted and validated by their consumer.
OPEN_SECTIONS = ('model',)


#: The config files of the project: the checkout's `configs/` beside the package, or, in a non-editable install
#: (`pip install .`), the copy installed with it as the package `resnet_jax.configs` (setup.cfg's package_dir).
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
_INSTALLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def configs_directory() -> str:
  """The directory of the project's config files (default.py, cifar.py, ...), checkout or installed."""
  if os.path.isfile(os.path.join(_CHECKOUT_CONFIGS, 'default.py')):
    return _CHECKOUT_CONFIGS
  return _INSTALLED_CONFIGS


def import_configs() -> None:
  """Makes `import configs` (how config files import their base: `from configs import default`) find the
  project's config files: the checkout's folder on sys.path, or the installed `resnet_jax.configs` under the
  name `configs` (putting the installed package's own folder on sys.path would expose its modules, `data`,
  `models`, `config`, as top-level names)."""
  directory = configs_directory()
  if directory == _CHECKOUT_CONFIGS:
    root = os.path.dirname(directory)
    if root not in sys.path:
      sys.path.insert(0, root)
  elif 'configs' not in sys.modules:
    sys.modules['configs'] = importlib.import_module('resnet_jax.configs')


def _packaged_path(path: str) -> str:
  """`configs/F.py` as the command lines write it, run outside the checkout: the installed copy of F.py."""
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) == 2 and parts[0] == 'configs' and not os.path.isfile(path):
    installed = os.path.join(configs_directory(), parts[1])
    if os.path.isfile(installed):
      return installed
  return path


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py` or `path.py:arg` and returns `get_config(arg)`. `configs/F.py` names the project's config
  file F.py from any directory (when no such file is there)."""
  path, _, arg = spec.partition(':')
  if not path.endswith('.py'):
    raise UserError(f"config {spec!r}: expected a Python file such as configs/cifar.py or configs/cifar.py:ARG")
  path = _packaged_path(path)
  if not os.path.isfile(path):
    here = os.path.dirname(path) or '.'
    known = sorted(f for f in os.listdir(here) if f.endswith('.py')) if os.path.isdir(here) else []
    hint = f"; files in {here}/: {', '.join(known)}" if known else ''
    raise UserError(f"config file {path!r} does not exist{hint}")
  # Config files import their base as `from configs import default`: make the folder holding `configs/`
  # importable wherever the command is run from.
  if os.path.dirname(os.path.abspath(path)) == configs_directory():
    import_configs()
  else:  # a config folder of the user's own
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
      sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location(f'_resnet_jax_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UserError(f"config file {path!r}, line {e.lineno}: {e.msg}; fix the file") from None
  except Exception as e:  # pylint: disable=broad-except  (the user's file: name it, not a traceback)
    raise _config_file_error(path, e) from None
  if not hasattr(module, 'get_config'):
    raise UserError(f"config file {path!r} defines no get_config(); see configs/default.py for the shape")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except UserError:
    raise
  except TypeError as e:
    if arg:
      raise UserError(f"config file {path!r} takes no argument, but ':{arg}' was given") from e
    raise _config_file_error(path, e) from None
  except KeyError as e:
    raise UserError(f"config file {path!r} has no variant {arg!r}: {e.args[0]}") from e
  except Exception as e:  # pylint: disable=broad-except
    raise _config_file_error(path, e) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  return config


def _config_file_error(path: str, error: BaseException) -> UserError:
  """An exception raised by the code of a config file, as one line naming the file and line."""
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(frame.filename) == os.path.abspath(path)]
  where = f", line {lines[-1]}" if lines else ''
  message = (str(error).strip().splitlines() or [''])[0]
  return UserError(f"config file {path!r}{where} failed: {type(error).__name__}: {message}; fix the file")


def _parse_value(text: str, current: Any, path: str) -> Any:
  """Parses an override string to the type of the field it replaces."""
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise UserError(f"--config.{path}={text}: expected true or false")
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      # --config.model.scan_units=false must be False, not the (true) string 'false'.
      return {'none': None, 'true': True, 'false': False}.get(text.lower(), text)
  if text.lower() == 'none':
    return None
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise UserError(f"--config.{path}={text}: expected an integer") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise UserError(f"--config.{path}={text}: expected a number") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text if text.strip().startswith(('(', '[')) else f'({text},)')
    except (ValueError, SyntaxError):
      raise UserError(f"--config.{path}={text}: expected a list such as 32000,48000") from None
    return type(current)(value)
  if isinstance(current, str):
    return text
  raise UserError(f"--config.{path}: a {type(current).__name__} field cannot be set from the command line")


def apply_override(config: ml_collections.ConfigDict, path: str, text: str) -> None:
  """Sets `config.<path>` from a command-line string, or raises UserError naming the valid fields."""
  parts = path.split('.')
  node = config
  for depth, key in enumerate(parts):
    prefix = '.'.join(parts[:depth])
    if not isinstance(node, ml_collections.ConfigDict):
      raise UserError(f"--config.{path}: config.{prefix} is a value, not a section")
    last = depth == len(parts) - 1
    if key not in node:
      if last and prefix in OPEN_SECTIONS:
        with node.unlocked():
          node[key] = _parse_value(text, None, path)
        return
      close = difflib.get_close_matches(key, list(node.keys()), n=3)
      where = f"config.{prefix}" if prefix else 'config'
      hint = f"; did you mean {', '.join(close)}?" if close else f"; fields of {where}: {', '.join(sorted(node.keys()))}"
      raise UserError(f"unknown config field {path!r}{hint}")
    if last:
      current = node[key]
      if isinstance(current, ml_collections.ConfigDict):
        raise UserError(f"--config.{path} is a section; set one of its fields: {', '.join(sorted(current.keys()))}")
      # FieldReferences keep their declared type even when their value is None (ml_collections placeholders).
      ref_type = None
      try:
        ref_type = node.get_ref(key).get_type()
      except Exception:  # pylint: disable=broad-except
        pass
      if current is None and ref_type in (int, float, bool, str, tuple):
        current = ref_type()  # parse as that type
      value = _parse_value(text, current, path)
      try:
        node[key] = value
      except TypeError as e:
        raise UserError(f"--config.{path}={text}: {e}") from None
      return
    node = node[key]


def _clear_if_present(config: ml_collections.ConfigDict, path: str) -> None:
  *parents, key = path.split('.')
  node = config
  for part in parents:
    node = node.get(part)
    if not isinstance(node, ml_collections.ConfigDict):
      return
  if key in node:
    node[key] = None


def split_override_args(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other command-line arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      body = arg[len('--config.'):]
      if '=' in body:
        key, value = body.split('=', 1)
      elif i + 1 < len(argv):
        key, value = body, argv[i + 1]
        i += 1
      else:
        raise UserError(f"{arg}: missing value; write {arg}=VALUE")
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def flags_parser(flag_values: flags.FlagValues, overrides: list[tuple[str, str]]):
  """An absl `app.run(flags_parser=...)` for the CLIs: the named flags are parsed by absl, `--config.a.b=v`
  overrides are appended to `overrides`; a mistake in either is one `error:` line and exit 2."""
  def parse(argv: list[str]) -> list[str]:
    with errors.exit_on_error():
      rest, parsed = split_override_args(argv)
    overrides.extend(parsed)
    try:
      return flag_values(rest)
    except flags.Error as error:
      errors.fail(f'{error}; see --help')
  return parse


def build_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """Loads a config file, applies overrides and validates the fields every run needs."""
  config = load_config_file(spec)
  given = {path for path, text in overrides if text.lower() != 'none'}
  for path, text in overrides:
    apply_override(config, path, text)
    # A duration given in one unit on the command line replaces the config file's other unit.
    for unit, other in (('_steps', '_epochs'), ('_epochs', '_steps')):
      if path.endswith(unit) and text.lower() != 'none':
        sibling = path[:-len(unit)] + other
        if sibling in given:
          raise UserError(f"--config.{path} and --config.{sibling} both given; keep one")
        _clear_if_present(config, sibling)
  validate(config)
  return config


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the fields shared by every run. Section-specific checks live with their consumers
  (optim.make_schedule, models.create_model, data.sources.open_split)."""
  for name in ('seed', 'batch_size', 'model', 'dataset'):
    if name not in config:
      raise UserError(f"config has no field {name!r}; start your config from configs/default.py")
  if not isinstance(config.batch_size, int) or config.batch_size <= 0:
    raise UserError(f"config.batch_size must be a positive integer (the global batch), got {config.batch_size!r}")
  if not config.model.get('name'):
    raise UserError("config.model.name is not set; choose a name from resnet_jax.models.list_models()")
  if not config.dataset.get('name'):
    raise UserError("config.dataset.name is not set (e.g. cifar10, digits, npz:PATH, folder:PATH)")
  steps, epochs = config.get('total_steps'), config.get('total_epochs')
  if (steps is None) == (epochs is None):
    raise UserError("set exactly one of config.total_steps and config.total_epochs "
                    f"(got total_steps={steps}, total_epochs={epochs})")
  _check_ranges(config)


# (field, lowest, highest, whether the lowest is allowed, what it means): values nobody can have meant.
_RANGES = (
    ('schedule.base_lr', 0.0, None, False, 'the peak learning rate'),
    ('schedule.decay_factor', 0.0, None, False, 'the factor applied at each boundary; > 1 raises the rate'),
    ('schedule.warmup_factor', 0.0, 1.0, False, 'the fraction of base_lr held during warm-up'),
    ('optimizer.momentum', 0.0, 1.0, True, None),
    ('optimizer.weight_decay', 0.0, None, True, None),
    ('label_smoothing', 0.0, 1.0, True, 'the probability mass spread over all classes'),
    ('schedule.reference_batch_size', 1, None, True, 'the batch base_lr is given for; None: no scaling'),
    ('eval_batch_size', 1, None, True, 'the global evaluation batch'),
    ('keep_checkpoints', 1, None, True, 'how many of the latest checkpoints are kept'),
    ('ema.decay', 0.0, 1.0, True, 'the weight of the old average at each update; 0 = no EMA'),
    ('ema.every_steps', 1, None, True, 'train steps between EMA updates'),
)
#: Fields whose highest value is excluded (a probability mass of 1, an average that never moves).
_OPEN_ABOVE = ('label_smoothing', 'ema.decay')


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  for field, low, high, low_ok, meaning in _RANGES:
    value: Any = config
    for part in field.split('.'):
      value = value.get(part) if hasattr(value, 'get') else None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    too_low = value < low if low_ok else value <= low
    too_high = high is not None and (value >= high if field in _OPEN_ABOVE else value > high)
    if too_low or too_high or value != value or math.isinf(value):  # value != value: NaN
      interval = (f"{'[' if low_ok else '('}{low}, {high}{')' if field in _OPEN_ABOVE else ']'}"
                  if high is not None else f"{'>=' if low_ok else '>'} {low}")
      raise UserError(f"config.{field}={value} is out of range: it must be {interval}"
                      f"{f' ({meaning})' if meaning else ''}")


def check_accumulate_steps(config: ml_collections.ConfigDict, devices: int) -> int:
  """config.accumulate_steps: a positive integer that divides the per-device batch (each micro-batch takes the
  same number of examples from every device). Returns the per-device micro-batch size."""
  steps = config.accumulate_steps
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise UserError(f"config.accumulate_steps must be a positive integer (micro-batches per optimizer step; 1 = "
                    f"no accumulation), got {steps!r}")
  per_device = config.batch_size // devices
  if per_device % steps:
    raise UserError(f"config.accumulate_steps={steps} does not divide the per-device batch {per_device} "
                    f"(batch_size {config.batch_size} over {devices} devices); use a divisor of {per_device}")
  return per_device // steps


def resolve_steps(config: ml_collections.ConfigDict, prefix: str, steps_per_epoch: float,
                  default: Optional[int] = None) -> Optional[int]:
  """Returns the duration `<prefix>_steps` or `<prefix>_epochs` in steps (big_vision's `u.steps`)."""
  steps, epochs = config.get(f'{prefix}_steps'), config.get(f'{prefix}_epochs')
  if steps is not None and epochs is not None:
    raise UserError(f"config sets both {prefix}_steps={steps} and {prefix}_epochs={epochs}; keep one")
  for unit, value in (('steps', steps), ('epochs', epochs)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise UserError(f"config.{prefix}_{unit} must be a number, got {value!r}")
  if steps is not None:
    if steps < 0:
      raise UserError(f"config.{prefix}_steps must be >= 0, got {steps}")
    return int(steps)
  if epochs is not None:
    if epochs < 0:
      raise UserError(f"config.{prefix}_epochs must be >= 0, got {epochs}")
    return int(math.ceil(epochs * steps_per_epoch))
  return default


def default_config() -> Optional[ml_collections.ConfigDict]:
  """configs/default.py's config, the base of every config file, or None where the configs folder cannot be
  imported (it is importable once a config file was loaded, and from the checkout)."""
  import_configs()
  try:
    from configs import default  # pylint: disable=g-import-not-at-top  (outside the package: see import_configs)
  except ImportError:
    return None
  return default.get_config()


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def nested_tuple(value: Any) -> Any:
  """Lists, tuples and NumPy arrays -> nested tuples of Python scalars (dict values too), everything else
  unchanged. Module attributes and config fields must be hashable and JSON round trips give lists, so this is
  the one conversion every layer uses (saved configs, normalisation statistics, checkpoint metadata)."""
  if isinstance(value, dict):
    return {k: nested_tuple(v) for k, v in value.items()}
  if hasattr(value, 'tolist') and not isinstance(value, (str, bytes)):  # NumPy arrays and scalars
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    return tuple(nested_tuple(v) for v in value)
  return value


def from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a config saved by `to_json` (lists come back as tuples, as config files write them)."""
  return ml_collections.ConfigDict(nested_tuple(json.loads(text)))
