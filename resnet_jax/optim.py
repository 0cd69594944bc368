"""Learning-rate schedules and optimizers (Optax), built from `config.schedule` and `config.optimizer`.

The papers' recipes:
  - CIFAR (He et al. 2015 Sec. 4.2, 2016 appendix): SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1
    divided by 10 at 32k and 48k iterations, stop at 64k; a constant warm-up at 0.01 for the first 400
    iterations (2016: "in all CIFAR experiments"; 2015: ResNet-110 only).
  - ImageNet (He et al. 2015 Sec. 3.4, fb.resnet.torch): lr 0.1 for batch 256, divided by 10 at epochs 30 and
    60 of 90.
Weight decay is the papers' coupled L2: `wd * param` is added to the gradient before momentum, exactly as
Caffe/Torch SGD do.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import models
from resnet_jax.config import resolve_steps
from resnet_jax.errors import UserError

OPTIMIZERS = ('sgd', 'lamb', 'lars', 'adamw')
#: config.optimizer.eps when None: timm's Lamb default, torch's AdamW default, optax.lars's default.
DEFAULT_EPS = {'lamb': 1e-6, 'adamw': 1e-8, 'lars': 0.0}
SCHEDULES = ('step', 'cosine', 'constant')
WARMUPS = ('none', 'constant', 'linear')
WEIGHT_DECAY_TARGETS = ('all', 'kernels')


def base_learning_rate(schedule_config: ml_collections.ConfigDict, batch_size: int) -> float:
  """`base_lr`, scaled linearly with the batch if `reference_batch_size` is set (Goyal et al. 2017)."""
  lr = float(schedule_config.base_lr)
  reference = schedule_config.get('reference_batch_size')
  if reference:
    lr *= batch_size / reference
  return lr


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: float, total_steps: int) -> optax.Schedule:
  """Builds the learning-rate schedule; raises UserError for an inconsistent one (before any compile)."""
  schedule_config = config.schedule
  if schedule_config.name not in SCHEDULES:
    raise UserError(f"unknown schedule {schedule_config.name!r}; choose one of {', '.join(SCHEDULES)}")
  warmup_kind = schedule_config.get('warmup') or 'none'
  if warmup_kind not in WARMUPS:
    raise UserError(f"unknown warmup {warmup_kind!r}; choose one of {', '.join(WARMUPS)}")
  base_lr = base_learning_rate(schedule_config, config.batch_size)
  warmup_steps = 0 if warmup_kind == 'none' else resolve_steps(schedule_config, 'warmup', steps_per_epoch, default=0)
  if warmup_steps >= total_steps and warmup_steps > 0:
    raise UserError(f"warm-up of {warmup_steps} steps is not shorter than training ({total_steps} steps); "
                    "shorten config.schedule.warmup_steps/warmup_epochs or train longer")

  boundaries: Sequence[int] = ()
  if schedule_config.name == 'step':
    boundaries = _boundaries(schedule_config, steps_per_epoch)
    increasing = all(earlier < later for earlier, later in zip(boundaries, boundaries[1:]))
    if any(boundary <= 0 for boundary in boundaries) or not increasing:
      raise UserError(f"learning-rate boundaries must be positive and strictly increasing, got {list(boundaries)}")
    # Boundaries past the end are allowed: a shortened (debug) or to-be-extended run keeps the recipe.
  decay_factor = float(schedule_config.decay_factor)
  boundaries_array = jnp.asarray(boundaries, jnp.int32)
  warmup_factor = float(schedule_config.get('warmup_factor') or 0.0)

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    if schedule_config.name == 'step':
      decays = jnp.sum(step >= boundaries_array) if boundaries else 0
      lr = base_lr * decay_factor ** decays
    elif schedule_config.name == 'cosine':
      progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
      lr = base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    else:
      lr = jnp.asarray(base_lr, jnp.float32)
    if warmup_kind == 'constant':
      lr = jnp.where(step < warmup_steps, base_lr * warmup_factor, lr)
    elif warmup_kind == 'linear':
      lr = jnp.where(step < warmup_steps, base_lr * step / max(warmup_steps, 1), lr)
    return jnp.asarray(lr, jnp.float32)

  return schedule


def _boundaries(schedule_config: ml_collections.ConfigDict, steps_per_epoch: float) -> tuple[int, ...]:
  in_steps, in_epochs = schedule_config.get('boundaries_steps'), schedule_config.get('boundaries_epochs')
  if in_steps is not None and in_epochs is not None:
    raise UserError("config.schedule sets both boundaries_steps and boundaries_epochs; keep one")
  as_tuple = lambda value: tuple(value) if isinstance(value, (tuple, list)) else (value,)  # '8' -> (8,)
  unit, value = ('steps', in_steps) if in_steps is not None else ('epochs', in_epochs)
  try:
    if in_steps is not None:
      return tuple(int(boundary) for boundary in as_tuple(in_steps))
    if in_epochs is not None:
      return tuple(int(round(float(epoch) * steps_per_epoch)) for epoch in as_tuple(in_epochs))
  except (TypeError, ValueError):
    raise UserError(f"config.schedule.boundaries_{unit}={value!r}: expected numbers such as 32000,48000") from None
  return ()


def weight_decay_mask(target: str) -> Callable:
  if target not in WEIGHT_DECAY_TARGETS:
    raise UserError(f"unknown config.optimizer.weight_decay_on {target!r}; choose one of "
                    f"{', '.join(WEIGHT_DECAY_TARGETS)}")
  if target == 'all':
    return lambda params: jax.tree.map(lambda _: True, params)

  def kernels_only(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)
  return kernels_only


# ----------------------------------------------------------------------------------------------------------
# Parameter groups: frozen parameters (`config.freeze`) and per-group learning rates
# (`config.optimizer.lr_multipliers`). They live here, not in `finetune`, because the optimizer state's
# structure depends on them and `checkpoints.load` rebuilds the optimizer from the saved config alone.

FROZEN = 'frozen'
TRAINED = 'trained'


def multiplier_label(factor: float) -> str:
  """The parameter group of the parameters trained at `factor` times the learning rate."""
  return f'lr_x{float(factor)!r}'


def parameter_path(path: Sequence[Any]) -> str:
  """A tree path as the '/'-joined names patterns are matched against, relative to the backbone:
  ('backbone', 'stage1_unit1', 'conv1', 'kernel') -> 'stage1_unit1/conv1/kernel'."""
  names = [str(getattr(key, 'key', getattr(key, 'name', key))) for key in path]
  return '/'.join(names[1:] if names and names[0] == 'backbone' else names)


def as_patterns(value: Any, field: str) -> tuple[str, ...]:
  """`config.freeze` / `config.init_exclude` as a tuple of patterns: None or '' -> (), 'stem,stage1' (the
  command line) -> ('stem', 'stage1'), a list or tuple as it is. Raises UserError for a bad regex."""
  if value is None or value == '':
    return ()
  if isinstance(value, str):
    patterns = tuple(part.strip() for part in value.split(',') if part.strip())
  elif isinstance(value, (tuple, list)) and all(isinstance(part, str) for part in value):
    patterns = tuple(value)
  else:
    raise UserError(f"config.{field} must be a list of regexes or stage names (stem, stage1.., head), got {value!r}")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as error:
      raise UserError(f"config.{field}: {pattern!r} is not a valid regex ({error})") from None
  return patterns


def lr_multipliers(config: ml_collections.ConfigDict) -> tuple[tuple[str, float], ...]:
  """`config.optimizer.lr_multipliers` as ((pattern, factor), ...): a dict (config files), pairs, or
  'head=10,stage4=2' (the command line). The first matching entry applies."""
  value = config.optimizer.get('lr_multipliers')
  if value is None or value == '' or value == ():
    return ()
  if isinstance(value, str):
    pairs = []
    for part in filter(None, (part.strip() for part in value.split(','))):
      pattern, sep, factor = part.rpartition('=')
      if not sep or not pattern:
        raise UserError(f"config.optimizer.lr_multipliers: {part!r} is not PATTERN=FACTOR (e.g. head=10,stage4=2)")
      pairs.append((pattern.strip(), factor.strip()))
  elif hasattr(value, 'items'):
    pairs = list(value.items())
  elif isinstance(value, (tuple, list)) and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in value):
    pairs = [tuple(pair) for pair in value]
  else:
    raise UserError("config.optimizer.lr_multipliers must map regexes or stage names to factors, e.g. "
                    f"{{'head': 10.0}} or head=10 on the command line; got {value!r}")
  result = []
  for pattern, factor in pairs:
    try:
      factor = float(factor)
    except (TypeError, ValueError):
      raise UserError(f"config.optimizer.lr_multipliers[{pattern!r}] = {factor!r} is not a number") from None
    if not 0 <= factor < math.inf:  # NaN and infinity too: an infinite rate diverges at the first step
      raise UserError(f"config.optimizer.lr_multipliers[{pattern!r}] = {factor} must be a finite number >= 0 "
                      "(0: use config.freeze)")
    as_patterns((pattern,), 'optimizer.lr_multipliers')
    result.append((str(pattern), factor))
  return tuple(result)


def _regexes(paths: Sequence[str], patterns: Sequence[str]) -> list[re.Pattern]:
  """Each pattern compiled: a stage name of `models.parameter_groups(paths)` ('stem', 'stage1'.., 'head') stands
  for its regex, anything else is a regex over the '/'-joined paths."""
  named = models.parameter_groups(paths)
  return [re.compile(named.get(pattern, pattern)) for pattern in patterns]


def group_labels(paths: Sequence[str], freeze: Sequence[str],
                 multipliers: Sequence[tuple[str, float]]) -> dict[str, str]:
  """path -> FROZEN, TRAINED or 'lr_x<factor>' (the first multiplier entry that matches)."""
  freeze_regexes = _regexes(paths, freeze)
  multiplier_regexes = list(zip(_regexes(paths, [pattern for pattern, _ in multipliers]),
                                (factor for _, factor in multipliers)))
  groups = {}
  for path in paths:
    if any(regex.search(path) for regex in freeze_regexes):
      groups[path] = FROZEN
      continue
    factor = next((factor for regex, factor in multiplier_regexes if regex.search(path)), 1.0)
    groups[path] = TRAINED if factor == 1.0 else multiplier_label(factor)
  return groups


def matches(paths: Sequence[str], pattern: str) -> list[str]:
  """The paths `pattern` (a regex or stage name) selects."""
  regex, = _regexes(paths, [pattern])
  return [path for path in paths if regex.search(path)]


def update_rule(optimizer_config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """config.optimizer.name's update, weight decay included, from optax's transforms.

  sgd: coupled L2 then Torch/Caffe SGD (v <- momentum * v + g; p <- p - lr * v; optax.sgd), as the papers.
  lamb (You et al. 2020; "ResNet strikes back"): Adam moments, decoupled weight decay, then the layer-wise trust
  ratio ||p|| / ||update||, applied, as timm's Lamb, only where weight decay applies (weight_decay_on).
  lars (You et al. 2017): optax.lars, weight decay and trust ratio masked alike, with `momentum` and
  `trust_coefficient`. adamw (Loshchilov & Hutter 2019): optax.adamw.
  `clip_grad_norm` first clips the global gradient norm (timm's Lamb clips at 1.0 by itself)."""
  name, weight_decay = optimizer_config.name, float(optimizer_config.weight_decay)
  if name not in OPTIMIZERS:
    raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
  mask = weight_decay_mask(optimizer_config.weight_decay_on)
  beta1, beta2 = optimizer_config.betas
  eps = DEFAULT_EPS.get(name) if optimizer_config.eps is None else float(optimizer_config.eps)
  if name == 'sgd':
    decay = optax.add_decayed_weights(weight_decay, mask=mask) if weight_decay else optax.identity()
    update = optax.chain(decay, optax.sgd(schedule, momentum=float(optimizer_config.momentum) or None,
                                          nesterov=bool(optimizer_config.nesterov)))
  elif name == 'lamb':
    update = optax.chain(optax.scale_by_adam(beta1, beta2, eps),
                         optax.add_decayed_weights(weight_decay, mask=mask),
                         optax.masked(optax.scale_by_trust_ratio(), mask),
                         optax.scale_by_learning_rate(schedule))
  elif name == 'lars':
    update = optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=mask, trust_ratio_mask=mask,
                        trust_coefficient=optimizer_config.trust_coefficient, eps=eps,
                        momentum=optimizer_config.momentum, nesterov=optimizer_config.nesterov)
  else:
    update = optax.adamw(schedule, beta1, beta2, eps, weight_decay=weight_decay, mask=mask)
  if optimizer_config.clip_grad_norm:
    update = optax.chain(optax.clip_by_global_norm(optimizer_config.clip_grad_norm), update)
  return update


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """`update_rule`. With `config.freeze` or `config.optimizer.lr_multipliers`, an `optax.multi_transform`
  over parameter groups: frozen parameters get a zero update (no weight decay either), a group with factor f
  the same update scaled by f (its learning rate times f, weight decay included)."""
  update = update_rule(config.optimizer, schedule)
  freeze = as_patterns(config.get('freeze'), 'freeze')
  multipliers = lr_multipliers(config)
  if not freeze and not multipliers:
    return update  # the state structure of every run without parameter groups

  def labels(params):
    paths = {}
    jax.tree_util.tree_map_with_path(lambda path, _: paths.setdefault(path, parameter_path(path)), params)
    groups = group_labels(list(paths.values()), freeze, multipliers)
    return jax.tree_util.tree_map_with_path(lambda path, _: groups[paths[path]], params)

  transforms = {FROZEN: optax.set_to_zero(), TRAINED: update}
  for _, factor in multipliers:
    transforms[multiplier_label(factor)] = optax.chain(update, optax.scale(factor))
  return optax.multi_transform(transforms, labels)
