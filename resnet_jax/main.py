r"""Command line: train or evaluate one experiment.

  python -m resnet_jax.main --config configs/quickstart.py --workdir runs/quickstart
  python -m resnet_jax.main --config configs/cifar.py:preact_resnet164 --workdir runs/p164 \
      --config.batch_size=64
  python -m resnet_jax.main --workdir runs/quickstart --mode eval

This file is intentionally thin (as the Flax examples'): the work is in `train.train_and_evaluate` and
`evaluate.evaluate_checkpoint`, which notebooks import directly. Mistakes in the input (config, workdir,
dataset, model name) print one `error:` line and exit with status 2 before anything is compiled or written.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from resnet_jax import config as config_lib
from resnet_jax import errors
from resnet_jax.errors import UserError

flags.DEFINE_string('config', None, 'Config file, optionally with an argument: configs/F.py[:ARG]. '
                    'Fields are overridden with --config.a.b=value.')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and plots (created if missing).')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (resumes automatically) or eval (latest checkpoint).')
flags.DEFINE_bool('allow_config_change', False, 'Resume a run with a config that differs from the recorded one '
                  '(beyond the total steps and the intervals); the change is appended to '
                  'WORKDIR/config_history.jsonl with its step.')
flags.DEFINE_integer('step', None, 'With --mode eval: the checkpoint step to evaluate (default: latest).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, to run as one of several processes '
                    '(default: $JAX_COORDINATOR_ADDRESS; TPU pods and SLURM are detected automatically).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, num_processes) (default: $JAX_PROCESS_ID).')
FLAGS = flags.FLAGS

_OVERRIDES: list[tuple[str, str]] = []


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    errors.fail(f"unexpected arguments {' '.join(argv[1:])}; see --help for the flags")
  if not FLAGS.workdir:
    errors.fail('--workdir is required (the directory for checkpoints and metrics)')
  with errors.exit_on_error():
    if FLAGS.mode == 'train' and not FLAGS.config:
      raise UserError('--config is required to train, e.g. --config configs/quickstart.py')
    config = config_lib.build_config(FLAGS.config, _OVERRIDES) if FLAGS.config else None
    if config is None and _OVERRIDES:
      raise UserError('--config.* overrides need --config in eval mode')
    if FLAGS.mode == 'train' and FLAGS.step is not None:
      raise UserError('--step is for --mode eval (the checkpoint to evaluate); training resumes from the latest '
                      'checkpoint by itself')
    # Imported only now: they load JAX, Flax, Orbax and the input stack (seconds), which --help and mistakes in
    # the flags or the config do not need before their one error line.
    import jax  # pylint: disable=g-import-not-at-top
    from resnet_jax import evaluate, parallel, train  # pylint: disable=g-import-not-at-top
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
      with parallel.exit_if_a_process_is_lost(FLAGS.workdir):  # another process died: one line, exit 4
        if FLAGS.mode == 'train':
          result = train.train_and_evaluate(config, FLAGS.workdir, FLAGS.allow_config_change)
          outcome = train.outcome(FLAGS.workdir, result)  # on every process: reading the checkpoints syncs them
          if jax.process_index() == 0:
            print(outcome)  # stdout: a redirect captures where everything is
        else:
          evaluate.evaluate_checkpoint(FLAGS.workdir, step=FLAGS.step, config=config)
    except KeyboardInterrupt:  # a second Ctrl-C (the first saves at the next step boundary and exits 0)
      errors.fail(f'interrupted; the checkpoints already saved in {FLAGS.workdir} are kept', 130)


def run() -> None:
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=config_lib.flags_parser(FLAGS, _OVERRIDES))


if __name__ == '__main__':
  run()
