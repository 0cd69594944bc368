"""Transfer in miniature on real CIFAR-10 images: pretrain a ResNet-20 on classes 0-4, then learn classes 5-9
from 100 images per class three ways (from scratch, linear probe, full fine-tune), several seeds.

  CIFAR5K=path/to/cifar10_train_5k.npz python benchmarks/experiments/finetune_transfer.py OUT_DIR RESULTS_JSON
"""
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The 5,085 real CIFAR-10 training images (arrays images uint8 NHWC, labels); not in the repository.
DATA = os.environ.get('CIFAR5K', '../shared/data/cifar10_train_5k.npz')
out, results_path = sys.argv[1], sys.argv[2]
seeds = [int(s) for s in os.environ.get('SEEDS', '0,1').split(',')]
os.makedirs(out, exist_ok=True)

# Splits (written under OUT, never committed). Seeded permutation of the 5k file.
with np.load(DATA) as d:
  images, labels = d['images'], d['labels'].astype(np.int64)
rng = np.random.default_rng(0)
order = rng.permutation(len(labels))
images, labels = images[order], labels[order]
source, target = labels < 5, labels >= 5
src_idx = np.flatnonzero(source)
n_src_test = len(src_idx) // 10
np.savez(f'{out}/pre_test.npz', images=images[src_idx[:n_src_test]], labels=labels[src_idx[:n_src_test]],
         num_classes=5)
np.savez(f'{out}/pre_train.npz', images=images[src_idx[n_src_test:]], labels=labels[src_idx[n_src_test:]],
         num_classes=5)
few = np.concatenate([np.flatnonzero(labels == c)[:100] for c in range(5, 10)])
held = np.setdiff1d(np.flatnonzero(target), few)
np.savez(f'{out}/tgt_train.npz', images=images[few], labels=labels[few] - 5, num_classes=5)
np.savez(f'{out}/tgt_test.npz', images=images[held], labels=labels[held] - 5, num_classes=5)
sizes = {'pretrain_train': int(len(src_idx) - n_src_test), 'pretrain_test': int(n_src_test),
         'target_train': int(len(few)), 'target_test': int(len(held))}
print(sizes, flush=True)

COMMON = ['--config', 'configs/default.py', '--config.model.name=cifar_resnet20', '--config.model.stage_widths=(8,16,32)', '--config.schedule.name=cosine',
          '--config.schedule.warmup=none', '--config.schedule.warmup_steps=None',
          '--config.schedule.boundaries_steps=None', '--config.optimizer.weight_decay=5e-4',
          '--config.eval_batch_size=500', f'--config.compilation_cache_dir={out}/xla_cache', '--config.checkpoint_every_steps=100000', '--config.eval_every_steps=100000']
PRETRAIN = COMMON + [f'--config.dataset.name=npz:{out}/pre', '--config.batch_size=64', '--config.total_steps=120',
                     '--config.log_every_steps=30']
TARGET = COMMON + [f'--config.dataset.name=npz:{out}/tgt', '--config.batch_size=50', '--config.total_steps=60',
                   '--config.log_every_steps=30']
METHODS = {
    'scratch': ['--config.schedule.base_lr=0.05'],
    'linear_probe': ['--config.schedule.base_lr=0.1', f'--config.init_from={out}/pretrain',
                     '--config.init_exclude=head', '--config.freeze=stem,stage1,stage2,stage3'],
    'fine_tune': ['--config.schedule.base_lr=0.05', f'--config.init_from={out}/pretrain',
                  '--config.init_exclude=head'],
}


def run(args, workdir):
  command = [sys.executable, '-m', 'resnet_jax.main', *args, '--workdir', workdir]
  started = time.time()
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  if result.returncode:
    print(result.stderr[-3000:])
    raise SystemExit(result.returncode)
  lines = [json.loads(line) for line in open(f'{workdir}/metrics.jsonl')]
  accuracy = [line['test_accuracy'] for line in lines if 'test_accuracy' in line][-1]
  seconds = time.time() - started
  print(f'{os.path.basename(workdir)}: test_accuracy {accuracy:.4f} ({seconds:.0f}s)', flush=True)
  display = ' '.join(['python -m resnet_jax.main', *args, '--workdir', workdir])
  return accuracy, seconds, display


results = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
           'commit': subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True,
                                    text=True).stdout.strip() + ' (+ uncommitted fine-tuning work)',
           'machine': 'CPU, 2 shared cores (other jobs running), float32',
           'data': f'{DATA}: seeded permutation (numpy default_rng(0)); source = classes 0-4 (90% train / 10% test); '
                   'target = classes 5-9 relabelled 0-4, 100 training images per class, every other image held out '
                   'for test', 'sizes': sizes, 'runs': {}}
acc, secs, cmd = run(PRETRAIN, f'{out}/pretrain')
results['pretrain'] = {'test_accuracy_classes_0_4': acc, 'seconds': secs, 'command': cmd}
for seed in seeds:
  for method, extra in METHODS.items():
    acc, secs, cmd = run(TARGET + extra + [f'--config.seed={seed}'], f'{out}/{method}_s{seed}')
    results['runs'].setdefault(method, []).append({'seed': seed, 'test_accuracy': acc, 'seconds': secs,
                                                  'command': cmd})
for method, runs in results['runs'].items():
  accs = [r['test_accuracy'] for r in runs]
  results.setdefault('summary', {})[method] = {'mean_test_accuracy': float(np.mean(accs)),
                                               'std': float(np.std(accs)), 'seeds': len(accs)}
json.dump(results, open(results_path, 'w'), indent=2)
print(json.dumps(results['summary'], indent=2))
