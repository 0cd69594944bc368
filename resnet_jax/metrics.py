"""What a run writes for people to read: metrics.jsonl, TensorBoard events, curves.png, a progress display.

`metrics.jsonl` holds one JSON object per line with `step` and metric names: training lines carry
`train_loss`, `train_accuracy`, `learning_rate`, `images_per_sec`; evaluation lines `test_accuracy` (a
fraction in [0, 1]), `test_error` and `test_loss`. Only process 0 writes. TensorBoard events are written with
tensorboardX (no TensorFlow import).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

import jax

from resnet_jax import storage
from resnet_jax.errors import UserError

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl`. A last line cut short (the run was killed while writing it) is
  dropped with a warning; an unreadable line before it is a UserError naming the line."""
  path = storage.resolve(workdir) / METRICS_FILE
  if not storage.exists(path):
    return []
  lines = [(number, line) for number, line in enumerate(storage.read_text(path).splitlines(), 1) if line.strip()]
  records = []
  for index, (number, line) in enumerate(lines):
    try:
      records.append(json.loads(line))
    except ValueError:
      if index == len(lines) - 1:
        print(f'warning: {path}: dropped line {number}, cut short ({line.strip()[:60]!r}; the run was probably '
              'stopped while writing it)', file=sys.stderr)
        break
      raise UserError(f"{path}: line {number} is not JSON ({line.strip()[:60]!r}); delete or fix that line") from None
  return records


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard; draws curves.png on request (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if storage.is_remote(workdir):
        storage.register_tensorboard_writers()
      self._tb = SummaryWriter(logdir=str(storage.resolve(workdir)), purge_step=resume_step or None)
    except ImportError:  # TensorBoard output is optional; the JSON lines are the record.
      self._tb = None

  def _truncate_after(self, step: int) -> None:
    """On resume, drops lines logged after the checkpoint we restarted from (they will be logged again)."""
    path = storage.resolve(self.workdir) / METRICS_FILE
    if not storage.exists(path):
      return
    kept = [record for record in read_metrics(self.workdir) if record.get('step', 0) <= step]
    storage.write_text(path, ''.join(json.dumps(record) + '\n' for record in kept))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({name: _plain(value) for name, value in metrics.items()})
    storage.append_text(storage.resolve(self.workdir) / METRICS_FILE, json.dumps(record) + '\n')
    if self._tb is not None:
      for key, value in record.items():
        if key != 'step' and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def plot_curves(self) -> Optional[str]:
    """Training loss and test error against step, as in the papers' figures; returns the PNG path."""
    if not self.enabled:
      return None
    return plot_curves(self.workdir)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


CURVE_KEYS = {'error': (('train_accuracy', True), ('test_accuracy', True)),
              'loss': (('train_loss', False), ('test_loss', False))}


def curve_series(records: list[dict[str, Any]], label: str, metric: str = 'error') -> dict[str, Any]:
  """One run's training and test curves from its metrics.jsonl records: {'label', 'train': (steps, values),
  'test': (steps, values)}; 'error' is 100 * (1 - accuracy) in %, 'loss' the cross-entropy."""
  if metric not in CURVE_KEYS:
    raise ValueError(f"metric must be one of {', '.join(CURVE_KEYS)}, got {metric!r}")
  series = {'label': label}
  for part, (key, is_accuracy) in zip(('train', 'test'), CURVE_KEYS[metric]):
    points = [(r['step'], 100.0 * (1.0 - r[key]) if is_accuracy else r[key]) for r in records
              if r.get(key) is not None]
    series[part] = tuple(list(v) for v in zip(*points)) if points else ([], [])
  return series


def draw_curves(ax, series: list[dict[str, Any]], metric: str = 'error') -> None:
  """The papers' training-curve figure (He et al. 2015 Fig. 6, He et al. 2016 Fig. 6) on `ax`: per series the
  training curve thin and dashed, the test curve bold, in one colour; an optional min-max band per part
  ('train_band' / 'test_band': (steps, low, high)). The one drawing function of curves.png and resnet_jax.plot."""
  colors = ['tab:blue', 'tab:red', 'tab:green', 'tab:orange', 'tab:purple', 'tab:brown', 'tab:pink', 'tab:gray',
            'tab:olive', 'tab:cyan']
  for index, s in enumerate(series):
    color = colors[index % len(colors)]
    for part, style in (('train', dict(linestyle='--', linewidth=0.9)), ('test', dict(linewidth=2.2))):
      steps, values = s.get(part, ([], []))
      band = s.get(f'{part}_band')
      if band and len(band[0]):
        ax.fill_between(band[0], band[1], band[2], color=color, alpha=0.15, linewidth=0)
      if len(steps):
        ax.plot(steps, values, color=color, label=s['label'] if part == 'test' or not len(s['test'][0]) else None,
                marker='o' if part == 'test' and len(steps) < 12 else None, markersize=3, **style)
  ax.set_xlabel('iterations')
  ax.set_ylabel('error (%)' if metric == 'error' else 'loss')
  if metric == 'loss':
    ax.set_yscale('log')
  ax.grid(alpha=0.3)
  handles, labels = ax.get_legend_handles_labels()
  if handles:
    ax.legend(handles, labels, fontsize=7, title='dashed: training, bold: test', title_fontsize=7)


def plot_curves(workdir: str) -> Optional[str]:
  """WORKDIR/curves.png: training (dashed) and test (bold) error, and the same for the loss, against step."""
  records = read_metrics(workdir)
  label = os.path.basename(os.path.normpath(workdir))
  panels = [curve_series(records, label, metric) for metric in ('error', 'loss')]
  if not any(len(s[part][0]) for s in panels for part in ('train', 'test')):
    return None
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(10, 3.8))
  axes = fig.subplots(1, 2)
  for ax, metric, series in zip(axes, ('error', 'loss'), panels):
    draw_curves(ax, [series], metric)
  test_steps, test_errors = panels[0]['test']
  if test_errors:
    axes[0].annotate(f'{test_errors[-1]:.2f}%', (test_steps[-1], test_errors[-1]), textcoords='offset points',
                     xytext=(-10, 8))
  fig.suptitle(label)
  fig.tight_layout()
  path = storage.resolve(workdir) / CURVES_FILE
  storage.save_figure(fig, path, dpi=110)
  return str(path)


def _plain(value: Any) -> Any:
  if hasattr(value, 'item'):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


class Progress:
  """Step, img/s and ETA: a bar redrawn in place on a terminal, one log line per update otherwise."""

  def __init__(self, total_steps: int, start_step: int = 0, stream=None):
    self.total_steps = total_steps
    self.stream = stream or sys.stderr
    self.interactive = self.stream.isatty() and jax.process_index() == 0
    self.enabled = jax.process_index() == 0
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._rate = None  # steps per second over the latest interval (excludes earlier compiles)

  def restart_clock(self) -> None:
    """Excludes the time since the last update (compilation, evaluation) from the next rate."""
    self._last_time = time.perf_counter()

  def update(self, step: int, batch_size: int, **fields: Any) -> float:
    """Records that `step` was reached; returns images/s over the interval since the last update."""
    now = time.perf_counter()
    elapsed = max(now - self._last_time, 1e-9)
    steps = step - self._last_step
    self._rate = steps / elapsed if steps > 0 else self._rate
    self._last_step, self._last_time = step, now
    images_per_sec = (self._rate or 0.0) * batch_size
    if self.enabled:
      self._show(step, images_per_sec, fields)
    return images_per_sec

  def _show(self, step: int, images_per_sec: float, fields: Mapping[str, Any]) -> None:
    eta = (self.total_steps - step) / self._rate if self._rate else float('nan')
    parts = [f'step {step}/{self.total_steps}']
    parts += [f'{name} {value:.4g}' if isinstance(value, float) else f'{name} {value}'
              for name, value in fields.items()]
    parts += [f'{images_per_sec:,.0f} img/s', f'ETA {format_duration(eta) if math.isfinite(eta) else "?"}']
    text = ' | '.join(parts)
    if self.interactive:
      width = 24
      filled = int(width * step / max(self.total_steps, 1))
      self.stream.write(f'\r[{"#" * filled}{"." * (width - filled)}] {text}\x1b[K')
      if step >= self.total_steps:
        self.stream.write('\n')
    else:
      self.stream.write(text + '\n')
    self.stream.flush()

  def message(self, text: str) -> None:
    """Prints a line without breaking the bar."""
    if not self.enabled:
      return
    if self.interactive:
      self.stream.write('\r\x1b[K')
    self.stream.write(text + '\n')
    self.stream.flush()
