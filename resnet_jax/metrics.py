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

METRICS_FILE = 'metrics.jsonl'
CURVES_FILE = 'curves.png'


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as file:
    return [json.loads(line) for line in file if line.strip()]


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
      self._tb = SummaryWriter(logdir=workdir, purge_step=resume_step or None)
    except ImportError:  # TensorBoard output is optional; the JSON lines are the record.
      self._tb = None

  def _truncate_after(self, step: int) -> None:
    """On resume, drops lines logged after the checkpoint we restarted from (they will be logged again)."""
    path = os.path.join(self.workdir, METRICS_FILE)
    if not os.path.exists(path):
      return
    kept = [record for record in read_metrics(self.workdir) if record.get('step', 0) <= step]
    tmp = path + '.tmp'
    with open(tmp, 'w') as file:
      file.writelines(json.dumps(record) + '\n' for record in kept)
    os.replace(tmp, path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    record.update({name: _plain(value) for name, value in metrics.items()})
    with open(os.path.join(self.workdir, METRICS_FILE), 'a') as file:
      file.write(json.dumps(record) + '\n')
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


def plot_curves(workdir: str) -> Optional[str]:
  records = read_metrics(workdir)
  train = [(record['step'], record['train_loss']) for record in records if 'train_loss' in record]
  test = [(record['step'], 100.0 * (1.0 - record['test_accuracy'])) for record in records if 'test_accuracy' in record]
  if not train and not test:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8))
  if train:
    ax_loss.plot(*zip(*train), color='tab:blue', linewidth=1)
  ax_loss.set_xlabel('step')
  ax_loss.set_ylabel('training loss')
  ax_loss.set_yscale('log')
  ax_loss.grid(alpha=0.3)
  if test:
    ax_err.plot(*zip(*test), color='tab:red', marker='o', markersize=3, linewidth=1)
    ax_err.annotate(f'{test[-1][1]:.2f}%', test[-1], textcoords='offset points', xytext=(-10, 8))
  ax_err.set_xlabel('step')
  ax_err.set_ylabel('test error (%)')
  ax_err.grid(alpha=0.3)
  fig.suptitle(os.path.basename(os.path.normpath(workdir)))
  fig.tight_layout()
  path = os.path.join(workdir, CURVES_FILE)
  fig.savefig(path + '.tmp.png', dpi=110)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)
  return path


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
