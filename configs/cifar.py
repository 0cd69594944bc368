"""The papers' CIFAR experiments, one row each: `--config configs/cifar.py:ROW`.

  python -m resnet_jax.main --config configs/cifar.py:preact_resnet164 --workdir runs/p164
  python -m resnet_jax.main --config configs/cifar.py:resnet110_exclusive_gate_b6 --workdir runs/gate

Every row names its source (paper, table) and the published test error (%) it should reproduce, which
`python -m resnet_jax.reproduce` prints beside the measured one. `python -c "import configs.cifar as c;
print(*c.ROWS, sep='\\n')"` lists the rows.

Recipes (base: configs/default.py):
  He et al. 2015 Sec. 4.2: batch 128 on 2 GPUs (BN statistics per GPU: 64 examples, `batch_norm.mode='ghost'`),
    SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, 64k iterations; pad-4
    random crop + flip; per-pixel mean subtracted; warm-up at lr 0.01 for ~400 iterations for ResNet-110 and
    -1202 only ("until the training error is below 80%").
  He et al. 2016 (appendix): the same, with the 400-iteration 0.01 warm-up in every CIFAR experiment. Its
    CIFAR numbers are medians of 5 runs. The resnet-1k-layers Torch code normalises per channel
    (fb.resnet.torch), used here for the 2016 rows.
  Huang et al. 2016 (stochastic depth): 500 epochs, batch 128, lr 0.1 /10 at epochs 250 and 375, Nesterov
    momentum 0.9, weight decay 1e-4, p_L = 0.5 (linear decay). The paper reports the test error at the epoch
    of lowest validation error (45k/5k split); these rows train on all 50k and report the final error.
  Xie et al. 2017 (ResNeXt-29, appendix A): batch 128 on 8 GPUs (BN per GPU: 16), weight decay 5e-4, lr 0.1
    /10 at epochs 150 and 225 of 300, Nesterov (fb.resnet.torch), per-channel normalisation.
  Huang et al. 2017 (DenseNet-BC): batch 64, 300 epochs, lr 0.1 /10 at 50% and 75%, weight decay 1e-4,
    Nesterov momentum 0.9.
"""

from configs import default
from configs import _rows as rows


def Row(model, source, published_error, recipe='he2016', dataset='cifar10', **kw) -> rows.Row:  # pylint: disable=invalid-name
  return rows.Row(model, source, published_error, recipe, dataset, **kw)


def _he2015(model, error, **kw):
  return Row(model, 'He et al. 2015, Table 6', error, recipe='he2015', **kw)


_T1 = 'He et al. 2016, Table 1 (ResNet-110, shortcut variant on all units)'
_T2 = 'He et al. 2016, Table 2 (activation order {})'

ROWS: dict[str, rows.Row] = {
    # He et al. 2015, Table 6 (CIFAR-10, option A shortcuts). ResNet-110: best of 5 runs, mean 6.61 +- 0.16.
    'resnet20': _he2015('cifar_resnet20', 8.75),
    'resnet32': _he2015('cifar_resnet32', 7.51),
    'resnet44': _he2015('cifar_resnet44', 7.17),
    'resnet56': _he2015('cifar_resnet56', 6.97),
    'resnet110': _he2015('cifar_resnet110', 6.43, note='best of 5; mean 6.61 +- 0.16'),
    'resnet1202': _he2015('cifar_resnet1202', 7.93),
    # Plain nets of He et al. 2015 Fig. 6 (left): errors are only plotted (deeper plain nets train worse).
    'plain20': _he2015('cifar_plain20', None, note='Fig. 6 left, plotted only'),
    'plain32': _he2015('cifar_plain32', None, note='Fig. 6 left, plotted only'),
    'plain44': _he2015('cifar_plain44', None, note='Fig. 6 left, plotted only'),
    'plain56': _he2015('cifar_plain56', None, note='Fig. 6 left, plotted only'),
    'plain110': _he2015('cifar_plain110', None, note='Fig. 6 left, plotted only'),

    # He et al. 2016, Table 3 / Table 4 (medians of 5 runs).
    'preact_resnet110': Row('cifar_preact_resnet110', 'He et al. 2016, Table 3', 6.37),
    'preact_resnet164': Row('cifar_preact_resnet164', 'He et al. 2016, Table 3', 5.46),
    'preact_resnet1001': Row('cifar_preact_resnet1001', 'He et al. 2016, Table 3', 4.92,
                             note='mean 4.89 +- 0.14'),
    'preact_resnet1001_batch64': Row('cifar_preact_resnet1001', 'He et al. 2016, Table 4 (batch 64)', 4.62,
                                     overrides=(('batch_size', 64),), note='mean 4.69 +- 0.20'),
    'resnet164': Row('cifar_resnet164', 'He et al. 2016, Table 3 (original units)', 5.93),
    'resnet1001': Row('cifar_resnet1001', 'He et al. 2016, Table 3 (original units)', 7.61),
    'resnet110_1layer': Row('cifar_resnet110', 'He et al. 2016, Table 3 (1-layer units)', 9.90,
                            options=(('block', 'single'),)),
    'preact_resnet110_1layer': Row('cifar_preact_resnet110', 'He et al. 2016, Table 3 (1-layer units)', 8.91,
                                   options=(('block', 'single'),)),
    'c100_preact_resnet164': Row('cifar_preact_resnet164', 'He et al. 2016, Table 3', 24.33, dataset='cifar100'),
    'c100_preact_resnet1001': Row('cifar_preact_resnet1001', 'He et al. 2016, Table 3', 22.71, dataset='cifar100'),
    'c100_resnet164': Row('cifar_resnet164', 'He et al. 2016, Table 3 (original units)', 25.16, dataset='cifar100'),
    'c100_resnet1001': Row('cifar_resnet1001', 'He et al. 2016, Table 3 (original units)', 27.82,
                           dataset='cifar100'),

    # He et al. 2016, Table 1: shortcut variants of ResNet-110 ("fail": > 20% error).
    'resnet110_constant_scaling': Row('cifar_resnet110', _T1, None, note='fail',
                                      options=(('shortcut', 'scaling'), ('shortcut_scale', 0.5))),
    'resnet110_frozen_gating': Row('cifar_resnet110', _T1, 12.35, options=(
        ('shortcut', 'scaling'), ('shortcut_scale', 0.5), ('scale_residual', True))),
    'resnet110_exclusive_gate_b0': Row('cifar_resnet110', _T1, None, note='fail for b_g = 0..-5',
                                       options=(('shortcut', 'exclusive_gate'), ('gate_bias_init', 0.0))),
    'resnet110_exclusive_gate_b6': Row('cifar_resnet110', _T1, 8.70,
                                       options=(('shortcut', 'exclusive_gate'), ('gate_bias_init', -6.0))),
    'resnet110_exclusive_gate_b7': Row('cifar_resnet110', _T1, 9.81,
                                       options=(('shortcut', 'exclusive_gate'), ('gate_bias_init', -7.0))),
    'resnet110_shortcut_gate_b0': Row('cifar_resnet110', _T1, 12.86,
                                      options=(('shortcut', 'shortcut_gate'), ('gate_bias_init', 0.0))),
    'resnet110_shortcut_gate_b6': Row('cifar_resnet110', _T1, 6.91,
                                      options=(('shortcut', 'shortcut_gate'), ('gate_bias_init', -6.0))),
    'resnet110_conv1x1_shortcut': Row('cifar_resnet110', _T1, 12.22, options=(('shortcut', 'conv1x1'),)),
    'resnet110_dropout_shortcut': Row('cifar_resnet110', _T1, None, note='fail',
                                      options=(('shortcut', 'dropout'), ('shortcut_dropout_rate', 0.5))),
    'resnet110_zero_shortcut': Row('cifar_resnet110', _T1, None, note='fail (a plain net)',
                                   options=(('shortcut', 'none'),)),

    # Stochastic depth (Huang et al. 2016, Table 1 and Sec. 4).
    'resnet110_stochastic_depth': Row('cifar_resnet110', 'Huang et al. 2016, Table 1', 5.23, recipe='huang2016',
                                      options=(('survival_prob_last', 0.5),)),
    'resnet110_constant_depth': Row('cifar_resnet110', 'Huang et al. 2016, Table 1 (baseline)', 6.41,
                                    recipe='huang2016'),
    'c100_resnet110_stochastic_depth': Row('cifar_resnet110', 'Huang et al. 2016, Table 1', 24.58,
                                           recipe='huang2016', dataset='cifar100',
                                           options=(('survival_prob_last', 0.5),)),
    'resnet1202_stochastic_depth': Row('cifar_resnet1202', 'Huang et al. 2016, Sec. 4 (1202 layers)', 4.91,
                                       recipe='huang2016_1202', options=(('survival_prob_last', 0.5),)),

    # ResNeXt-29 (Xie et al. 2017, Table 7: mean of 10 runs).
    'resnext29_8x64d': Row('resnext29_8x64d', 'Xie et al. 2017, Table 7', 3.65, recipe='xie2017'),
    'resnext29_16x64d': Row('resnext29_16x64d', 'Xie et al. 2017, Table 7', 3.58, recipe='xie2017'),
    'c100_resnext29_8x64d': Row('resnext29_8x64d', 'Xie et al. 2017, Table 7', 17.77, recipe='xie2017',
                                dataset='cifar100'),

    # DenseNet-BC (Huang et al. 2017, Table 2, C10+/C100+).
    'densenet_bc_100_12': Row('densenet_bc_100_12', 'Huang et al. 2017, Table 2', 4.51, recipe='densenet'),
    'densenet_bc_250_24': Row('densenet_bc_250_24', 'Huang et al. 2017, Table 2', 3.62, recipe='densenet'),
    'densenet_bc_190_40': Row('densenet_bc_190_40', 'Huang et al. 2017, Table 2', 3.46, recipe='densenet'),
    'c100_densenet_bc_100_12': Row('densenet_bc_100_12', 'Huang et al. 2017, Table 2', 22.27, recipe='densenet',
                                   dataset='cifar100'),
}

# A modern CIFAR recipe on the papers' ResNet-20/56 (issue 24, item 6). No paper reports these nets with exactly
# this recipe, so the rows have no published error. The recipe ('modern' in _apply_recipe), each value as read in
# its source:
#   cosine learning rate from 0.1 over the whole run, no warm-up, batch 128: TrivialAugment's CIFAR-10 setting
#     (Mueller & Hutter 2021; automl/trivialaugment confs/wresnet40x2_cifar10_b128_maxlr.1_ta_widesesp_nowarmup_
#     200epochs.yaml: lr 0.1, lr_schedule cosine, batch 128);
#   TrivialAugmentWide per example (the same file: the 'wide_standard' search space), on the host, before the
#     pad-4 crop and flip of the jitted step (TrivialAugment's code crops and flips first);
#   mixup alpha 1 (Zhang et al. 2018 Sec. 3.2; facebookresearch/mixup-cifar10 train.py --alpha default 1.);
#   CutMix alpha 1 on half of the batches (Yun et al. 2019; clovaai/CutMix-PyTorch README, CIFAR command:
#     --beta 1.0 --cutmix_prob 0.5): mix_prob 0.5, and a mixed batch is CutMix or mixup with probability 0.5 each
#     (torchvision v2's RandomChoice of RandomMixup/RandomCutmix; timm's --mixup-switch-prob 0.5);
#   label smoothing 0.1 (Szegedy et al. 2016 Sec. 7; torchvision's v2 recipe --label-smoothing 0.1);
#   EMA of the weights and BN statistics, decay 0.9998 with timm's ModelEmaV3 warm-up ramp (timm train.py
#     --model-ema-decay default; the reference file's section 4d).
# Kept from the He et al. 2016 rows, so that the comparison with them changes only the items above: SGD momentum
# 0.9, weight decay 1e-4 on every parameter (also mixup-cifar10's --decay default), per-channel normalisation, BN
# per 64 examples. TrivialAugment's own CIFAR file differs there (Nesterov, weight decay 5e-4, cutout 16, 200
# epochs). `*_modern_no_ema` is the same recipe without the average. The average does not change training, so its
# accuracies equal the raw-weight `test_accuracy` of a `*_modern` run (which reports both).
_MODERN = 'Modern CIFAR recipe (configs/cifar.py, the comment above these rows)'
for _depth in ('20', '56'):
  ROWS[f'resnet{_depth}_modern'] = Row(f'cifar_resnet{_depth}', _MODERN, None, recipe='modern',
                                       note='no published error for this setting')
  ROWS[f'resnet{_depth}_modern_no_ema'] = Row(f'cifar_resnet{_depth}', _MODERN, None, recipe='modern',
                                              overrides=(('ema.decay', 0.0),),
                                              note='no published error for this setting')

# Table 2 of He et al. 2016: the five activation orders for ResNet-110 and ResNet-164.
_ORDERS = {'a': 'original', 'b': 'bn_after_add', 'c': 'relu_before_add', 'd': 'relu_preact', 'e': 'full_preact'}
_TABLE2 = {'110': (6.61, 8.17, 7.84, 6.71, 6.37), '164': (5.93, 6.50, 6.14, 5.91, 5.46)}
for _depth, _errors in _TABLE2.items():
  for (_letter, _order), _error in zip(_ORDERS.items(), _errors):
    ROWS[f'resnet{_depth}_order_{_letter}'] = Row(f'cifar_resnet{_depth}', _T2.format(f'({_letter})'), _error,
                                                  options=(('unit_order', _order),))


def _apply_recipe(config, recipe: str) -> None:
  if recipe == 'he2015':
    config.augment.normalization = 'per_pixel_mean'
    config.schedule.warmup = 'none'
  elif recipe == 'he2016':
    pass  # configs/default.py is this recipe
  elif recipe == 'modern':  # the he2016 recipe plus the modern items (sources: the comment above the rows)
    config.schedule.name = 'cosine'
    config.schedule.warmup = 'none'
    config.label_smoothing = 0.1
    config.augment.mixup_alpha = 1.0
    config.augment.cutmix_alpha = 1.0
    config.augment.mix_prob = 0.5
    config.augment.mix_switch_prob = 0.5
    config.augment.auto_augment = 'trivialaugment'
    config.ema.decay = 0.9998
    config.ema.warmup = True
  elif recipe in ('huang2016', 'huang2016_1202', 'xie2017', 'densenet'):
    epochs, drops = {'huang2016': (500, (250, 375)), 'huang2016_1202': (300, (150, 225)),
                     'xie2017': (300, (150, 225)), 'densenet': (300, (150, 225))}[recipe]
    config.total_steps = None
    config.total_epochs = float(epochs)
    config.schedule.boundaries_steps = None
    config.schedule.boundaries_epochs = tuple(float(d) for d in drops)
    config.schedule.warmup = 'none'
    config.schedule.warmup_steps = None
    config.optimizer.nesterov = True
    config.batch_norm.mode = 'global'
    config.eval_every_steps = None
    config.eval_every_epochs = 10.0
    config.checkpoint_every_steps = None
    config.checkpoint_every_epochs = 10.0
    if recipe == 'huang2016_1202':  # lr 0.01 for the first 10 epochs, then 0.1 (Huang et al. 2016 Sec. 4)
      config.schedule.warmup = 'constant'
      config.schedule.warmup_epochs = 10.0
    if recipe == 'xie2017':
      config.optimizer.weight_decay = 5e-4
      config.batch_norm.mode = 'ghost'
      config.batch_norm.group_size = 16   # 128 over 8 GPUs
    if recipe == 'densenet':
      config.batch_size = 64
  else:
    raise ValueError(recipe)


def get_config(row: str = 'preact_resnet164'):
  spec = rows.lookup(ROWS, row)
  config = default.get_config()
  # The papers' 2-GPU runs computed BN statistics per GPU: 64 examples of the batch of 128.
  config.batch_norm.mode = 'ghost'
  config.batch_norm.group_size = 64
  _apply_recipe(config, spec.recipe)
  if spec.recipe == 'he2015' and spec.model in ('cifar_resnet110', 'cifar_resnet1202'):
    config.schedule.warmup = 'constant'  # "0.01 to warm up ... about 400 iterations"
  rows.apply_row(config, row, spec)
  if config.batch_norm.mode == 'ghost' and config.batch_size < 128:
    config.batch_norm.group_size = config.batch_size // 2  # still two "GPUs"
  return config
