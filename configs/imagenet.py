"""The papers' ImageNet experiments, one row each: `--config configs/imagenet.py:ROW`.

  python -m resnet_jax.data.prepare imagenet2012 --manual_dir /data/imagenet   # once (TFDS manual download)
  python -m resnet_jax.main --config configs/imagenet.py:resnet50 --workdir runs/r50

Recipes (ImageNet-1k train / validation):
  fb_resnet_torch (the default; the recipe of torchvision's and the ResNeXt paper's baselines): batch 256 on
    8 GPUs (BN statistics per GPU: 32), SGD Nesterov momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
    epochs 30 and 60 of 90; Inception-style random-sized crop 224 + flip + colour jitter 0.4 + PCA lighting
    0.1; per-channel normalisation; single centre crop 224 from the shorter side resized to 256.
  he2015 (He et al. 2015 Sec. 3.4): shorter side random in [256, 480], random 224 crop + flip, standard
    colour augmentation; SGD momentum 0.9 (Caffe: no Nesterov), batch 256, weight decay 1e-4, lr 0.1 divided
    by 10 "when the error plateaus" (here: at epochs 30 and 60 of 90, as fb.resnet.torch reproduces it);
    10-crop testing (Tables 2-3).
  bag_of_tricks (He et al. 2019 "Bag of Tricks", §2.1 baseline + §3.1 efficient training, the setting of Table 5):
    the fb_resnet_torch augmentation (random-sized crop 8%-100% with aspect 3/4-4/3, flip, brightness /
    saturation / hue x U[0.6, 1.4], PCA noise 0.1, centre crop 224 of 256), SGD Nesterov momentum 0.9, weight
    decay 1e-4 on conv/fc weights only ("no bias decay"), batch 1024 on 8 GPUs (BN statistics per GPU: 128),
    lr 0.4 (0.1 x 1024/256, linear scaling) reached by a linear warm-up over 5 epochs from 0, divided by 10 at
    epochs 30, 60 and 90 of 120, each residual unit's last BN gamma starting at 0 ("zero gamma"). FP16 there is
    config.model.dtype here ('auto': bfloat16 on accelerators). Not reproduced: the Xavier initialisation of the
    baseline (the zoo initialises as torchvision, He normal).
  bag_of_tricks_refined rows (He et al. 2019 Table 6, ResNet-50-D): the bag_of_tricks recipe with its
    training refinements added one by one: cosine decay (resnet50d_tricks_cosine, 77.91), + label smoothing 0.1
    (resnet50d_tricks_cosine_ls, 78.31), + mixup alpha 0.2 for 200 epochs (resnet50d_bag_of_tricks, 79.15).
    Knowledge distillation (the rows "+ distill", 78.67, and "+ distill with mixup", the paper's headline 79.29)
    is not implemented: no row.
  rsb ("ResNet strikes back", Wightman et al. 2021, A1/A2/A3; timm's recipe; facts in the rows' comments): LAMB
    (timm's: betas 0.9/0.999, eps 1e-6, global gradient-norm clip 1.0) with the BCE loss (targets binarised at
    0.2), batch 2048, linear warm-up of 5 epochs then cosine decay (timm ends at 1e-6, here at 0: a difference of
    1e-6 / 5e-3 of the peak), no weight decay on BN and biases, RandAugment on the host, mixup/CutMix (switch 0.5),
    bicubic resizing, no colour jitter (timm's --aa turns it off), test crop 224 of 235 (crop ratio 0.95).
  torchvision_v2 (torchvision's ResNet50_Weights.IMAGENET1K_V2 recipe, the PyTorch blog of 2021-11-18): SGD
    momentum 0.9 with lr 0.5 for batch 1024, linear warm-up of 5 epochs (torchvision starts at 0.01 x lr, here
    at 0), cosine to 0 over 600 epochs, weight decay 2e-5 not on BN (torchvision decays fc.bias, here biases
    are not decayed), label smoothing 0.1, mixup 0.2 / CutMix 1.0, TrivialAugmentWide, random erasing 0.1
    (value 0), repeated augmentation x4, FixRes train 176 / test resize 232 crop 224, bilinear, EMA every 32
    steps with decay 0.998908 (torchvision's 0.99998 adjusted: 1 - (1 - 0.99998) x 1024 x 32 / 600).
Published errors are top-1 (%) on the validation set with the row's test protocol.

Big batches on smaller hardware: the modern rows state the recipes' global batch (2048 for RSB, 1024 for
torchvision v2 and Bag of Tricks) and leave config.accumulate_steps at 1. A machine that holds only a part of it
keeps the recipe (batch, learning rate, schedule) by accumulating micro-batches, e.g. RSB A1 on 8 devices that
hold 64 images each:
  python -m resnet_jax.main --config configs/imagenet.py:resnet50_rsb_a1 --workdir runs/a1 \
      --config.accumulate_steps=4 --config.batch_norm.group_size=64
(2048 / 8 devices = 256 per device = 4 micro-batches of 64; BatchNorm statistics per micro-batch, so the row's
per-GPU BN group (256 for RSB, 128 for the batch-1024 rows) becomes the micro-batch's: set group_size to it.)
"""

from configs import _rows as rows
from configs import default


def Row(model, source, published_error, recipe='fb_resnet_torch', **kw) -> rows.Row:  # pylint: disable=invalid-name
  return rows.Row(model, source, published_error, recipe, 'imagenet2012', **kw)


_TEN_CROP = (('input.eval_crop_mode', 'ten'),)
_CROP_320 = (('input.eval_resize', 320), ('input.eval_crop', 320))
_FB = 'fb.resnet.torch pretrained/README (single crop 224)'
# He et al. 2019 Table 5: top-1 76.21 / 76.66 / 76.87 / 77.16 (errors 100 - top-1) and GFLOPs 3.86 / 4.13 / 4.34 /
# 4.35. resnet_jax.models.count_macs gives 3.858 / 4.089 / 4.329 / 4.329 GMACs (tests/test_models_params.py says
# why B-D differ). The "ResNet-50" of the table is the original (stride on the 1x1, He et al. 2015), ResNet-B
# moves the stride to the 3x3, C adds the deep stem, D the average-pool projection (§4.2, Fig. 2).
_TRICKS = 'He et al. 2019 (Bag of Tricks), Table 5'
_ZERO_GAMMA = (('zero_init_last_bn', True),)

# He et al. 2019 Table 6 (ResNet-50-D, refinements stacked on the Table 5 recipe; top-1 77.91 / 78.31 / 79.15).
_REFINED = 'He et al. 2019 (Bag of Tricks), Table 6'
_COSINE = (('schedule.name', 'cosine'), ('schedule.boundaries_epochs', None))
_SMOOTHING = (('label_smoothing', 0.1),)   # He et al. 2019 §5.2: epsilon = 0.1
# §5.3: mixup alpha 0.2, and "we increase the number of epochs from 120 to 200 because the mixed examples ask
# for a longer training progress to converge better".
_MIXUP = (('augment.mixup_alpha', 0.2), ('total_epochs', 200.0))
# "ResNet strikes back" (Wightman et al. 2021) A1/A2/A3 for ResNet-50: top-1 80.4 / 79.8 / 78.1 (A1: abstract;
# A2: timm's results csv resnet50.a2_in1k 79.828; A3: paperswithcode, csv 78.052). Per row: epochs, lr, weight
# decay (MMP configs resnet50_8xb256-rsb-a{1,2,3}), label smoothing (A1 0.1: the older MMP A1 config; it has no
# effect on the binarised BCE targets but is stated), stochastic depth (MMP drop_path_rate 0.05 / 0.05 / 0:
# timm's per-example drop path, survival 0.95 at the last unit), repeated augmentation (MMP RepeatAugSampler,
# A1/A2; timm's --aug-repeats 3), RandAugment (MMP: m7 / m7 / m6, mstd 0.5, increasing ops), mixup/CutMix alphas
# (0.2 / 0.1 / 0.1 and 1.0), train/test resolution (timm _rcfg/_r3cfg: 224/224, 224/224, 160/224).
_RSB = 'Wightman et al. 2021 (ResNet strikes back)'
_RSB_DROP_PATH = (('survival_prob_last', 0.95), ('stochastic_depth_mode', 'example'))

ROWS: dict[str, rows.Row] = {
    # fb.resnet.torch single-crop errors; torchvision's V1 weights come from the same recipe.
    'resnet18': Row('resnet18', _FB, 30.43),
    'resnet34': Row('resnet34', _FB, 26.73),
    'resnet50': Row('resnet50', _FB, 24.01),
    'resnet101': Row('resnet101', _FB, 22.44),
    'resnet152': Row('resnet152', _FB, 22.16),
    'preact_resnet200': Row('preact_resnet200', _FB, 21.66),
    # He et al. 2015, Tables 2-3: 10-crop testing; option A for Table 2, A/B/C for Table 3.
    'plain18': Row('plain18', 'He et al. 2015, Table 2 (10-crop)', 27.94, recipe='he2015', overrides=_TEN_CROP),
    'plain34': Row('plain34', 'He et al. 2015, Table 2 (10-crop)', 28.54, recipe='he2015', overrides=_TEN_CROP),
    'resnet18_option_a': Row('resnet18', 'He et al. 2015, Table 2 (10-crop)', 27.88, recipe='he2015',
                             options=(('shortcut_type', 'A'), ('stride_on', '1x1')), overrides=_TEN_CROP),
    'resnet34_option_a': Row('resnet34', 'He et al. 2015, Table 3 (10-crop)', 25.03, recipe='he2015',
                             options=(('shortcut_type', 'A'), ('stride_on', '1x1')), overrides=_TEN_CROP),
    'resnet34_option_b': Row('resnet34', 'He et al. 2015, Table 3 (10-crop)', 24.52, recipe='he2015',
                             options=(('stride_on', '1x1'),), overrides=_TEN_CROP),
    'resnet34_option_c': Row('resnet34', 'He et al. 2015, Table 3 (10-crop)', 24.19, recipe='he2015',
                             options=(('shortcut_type', 'C'), ('stride_on', '1x1')), overrides=_TEN_CROP),
    'resnet50_v1': Row('resnet50', 'He et al. 2015, Table 3 (10-crop)', 22.85, recipe='he2015',
                       options=(('stride_on', '1x1'),), overrides=_TEN_CROP),
    'resnet101_v1': Row('resnet101', 'He et al. 2015, Table 3 (10-crop)', 21.75, recipe='he2015',
                        options=(('stride_on', '1x1'),), overrides=_TEN_CROP),
    'resnet152_v1': Row('resnet152', 'He et al. 2015, Table 3 (10-crop)', 21.43, recipe='he2015',
                        options=(('stride_on', '1x1'),), overrides=_TEN_CROP),
    # He et al. 2016, Table 5: single crop, trained at 224, tested at 320.
    'resnet152_320': Row('resnet152', 'He et al. 2016, Table 5 (original, 320 crop)', 21.3, recipe='he2015',
                         overrides=_CROP_320),
    'preact_resnet152_320': Row('preact_resnet152', 'He et al. 2016, Table 5 (pre-act, 320 crop)', 21.1,
                                recipe='he2015', overrides=_CROP_320),
    'preact_resnet200_320': Row('preact_resnet200', 'He et al. 2016, Table 5 (pre-act, 320 crop)', 20.7,
                                recipe='he2015', overrides=_CROP_320),
    'preact_resnet200_320_aspect': Row('preact_resnet200', 'He et al. 2016, Table 5 (scale + aspect ratio, 320)',
                                       20.1, overrides=_CROP_320),
    # Xie et al. 2017, Table 3 / Table 4 (single crop 224, fb.resnet.torch recipe).
    'resnext50_32x4d': Row('resnext50_32x4d', 'Xie et al. 2017, Table 3', 22.2),
    'resnext101_32x4d': Row('resnext101_32x4d', 'Xie et al. 2017, Table 3', 21.2),
    'resnext101_64x4d': Row('resnext101_64x4d', 'Xie et al. 2017, Table 4', 20.4),
    # He et al. 2019, Table 5: the architecture tweaks under one recipe (bag_of_tricks).
    'resnet50_tricks': Row('resnet50', _TRICKS, 23.79, recipe='bag_of_tricks',
                           options=(('stride_on', '1x1'),) + _ZERO_GAMMA, note='ResNet-50, 3.86 GFLOPs'),
    'resnet50b_tricks': Row('resnet50', _TRICKS, 23.34, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                            note='ResNet-50-B, 4.13 GFLOPs'),
    'resnet50c_tricks': Row('resnet50c', _TRICKS, 23.13, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                            note='ResNet-50-C, 4.34 GFLOPs'),
    'resnet50d_tricks': Row('resnet50d', _TRICKS, 22.84, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                            note='ResNet-50-D, 4.35 GFLOPs'),
    # He et al. 2019, Table 6: the training refinements (bag_of_tricks_refined = the Table 5 recipe, ResNet-50-D).
    'resnet50d_tricks_cosine': Row('resnet50d', _REFINED, 22.09, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                                   overrides=_COSINE, note='+ cosine decay'),
    'resnet50d_tricks_cosine_ls': Row('resnet50d', _REFINED, 21.69, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                                      overrides=_COSINE + _SMOOTHING, note='+ label smoothing'),
    'resnet50d_bag_of_tricks': Row('resnet50d', _REFINED, 20.85, recipe='bag_of_tricks', options=_ZERO_GAMMA,
                                   overrides=_COSINE + _SMOOTHING + _MIXUP,
                                   note='+ mixup (w/o distillation; with it 79.29, not implemented)'),
    # "ResNet strikes back", A1-A3 (recipe rsb).
    'resnet50_rsb_a1': Row('resnet50', f'{_RSB}, A1', 19.6, recipe='rsb', options=_RSB_DROP_PATH, overrides=(
        ('total_epochs', 600.0), ('schedule.base_lr', 5e-3), ('optimizer.weight_decay', 0.01),
        ('label_smoothing', 0.1), ('repeated_augmentation', 3), ('augment.auto_augment', 'rand-m7-mstd0.5-inc1'),
        ('augment.mixup_alpha', 0.2), ('augment.cutmix_alpha', 1.0)), note='600 epochs, 224/224'),
    'resnet50_rsb_a2': Row('resnet50', f'{_RSB}, A2', 20.2, recipe='rsb', options=_RSB_DROP_PATH, overrides=(
        ('total_epochs', 300.0), ('schedule.base_lr', 5e-3), ('optimizer.weight_decay', 0.02),
        ('repeated_augmentation', 3), ('augment.auto_augment', 'rand-m7-mstd0.5-inc1'),
        ('augment.mixup_alpha', 0.1), ('augment.cutmix_alpha', 1.0)), note='300 epochs, 224/224'),
    'resnet50_rsb_a3': Row('resnet50', f'{_RSB}, A3', 21.9, recipe='rsb', overrides=(
        ('total_epochs', 100.0), ('schedule.base_lr', 8e-3), ('optimizer.weight_decay', 0.02),
        ('augment.auto_augment', 'rand-m6-mstd0.5-inc1'), ('augment.mixup_alpha', 0.1),
        ('augment.cutmix_alpha', 1.0), ('input.image_size', 160)), note='100 epochs, train 160 / test 224'),
    # torchvision's v2 weights (IMAGENET1K_V2): acc@1 80.858 (PyTorch blog 2021-11-18; recipe torchvision issue
    # #3995, comment 1013906621). Recipe torchvision_v2.
    'resnet50_tv_v2': Row('resnet50', 'torchvision ResNet50_Weights.IMAGENET1K_V2 (PyTorch blog 2021-11-18)',
                          19.142, recipe='torchvision_v2', note='600 epochs, train 176 / test 232 -> 224'),
}


def _apply_recipe(config, recipe: str) -> None:
  config.dataset.name = 'imagenet2012'
  config.dataset.eval_split = 'validation'
  config.batch_size = 256
  config.eval_batch_size = 500
  config.total_steps = None
  config.total_epochs = 90.0
  config.schedule.boundaries_steps = None
  config.schedule.boundaries_epochs = (30.0, 60.0)
  config.schedule.warmup = 'none'     # He et al. 2016 appendix: no warm-up on ImageNet
  config.schedule.warmup_steps = None
  config.optimizer.weight_decay = 1e-4
  config.batch_norm.mode = 'ghost'    # 256 over 8 GPUs: statistics per 32 examples
  config.batch_norm.group_size = 32
  config.augment.normalization = 'imagenet'  # the published statistics (fb.resnet.torch, torchvision)
  config.input.eval_resize = 256
  config.input.eval_crop = 224
  config.input.eval_crop_mode = 'center'
  config.log_every_steps = 500
  config.eval_every_steps = None
  config.eval_every_epochs = 1.0
  config.checkpoint_every_steps = None
  config.checkpoint_every_epochs = 1.0
  if recipe not in ('fb_resnet_torch', 'bag_of_tricks', 'he2015', 'rsb', 'torchvision_v2'):
    raise ValueError(recipe)
  if recipe in ('rsb', 'torchvision_v2'):
    _apply_modern_recipe(config, recipe)
  if recipe in ('fb_resnet_torch', 'bag_of_tricks'):
    config.optimizer.nesterov = True
    config.input.train_crop = 'inception'
    config.input.color_jitter = 0.4
    config.input.pca_lighting = 0.1
  if recipe == 'bag_of_tricks':
    config.batch_size = 1024
    config.batch_norm.group_size = 128  # 1024 over 8 GPUs
    config.schedule.base_lr = 0.4
    config.schedule.warmup = 'linear'
    config.schedule.warmup_epochs = 5.0
    config.total_epochs = 120.0
    config.schedule.boundaries_epochs = (30.0, 60.0, 90.0)
    config.optimizer.weight_decay_on = 'kernels'
  if recipe == 'he2015':
    config.optimizer.nesterov = False
    config.input.train_crop = 'scale'
    config.input.scale_range = (256, 480)
    config.input.pca_lighting = 0.1   # "standard color augmentation" (Krizhevsky et al. 2012)


def _apply_modern_recipe(config, recipe: str) -> None:
  """The settings "ResNet strikes back" and torchvision's v2 recipe share, then each one's (module docstring)."""
  config.schedule.name = 'cosine'
  config.schedule.boundaries_epochs = None
  config.schedule.warmup = 'linear'
  config.schedule.warmup_epochs = 5.0
  config.optimizer.weight_decay_on = 'kernels'  # timm param_groups_weight_decay; torchvision --norm-weight-decay 0
  config.input.train_crop = 'inception'         # random-resized crop, area 8%-100%, aspect 3/4-4/3
  config.augment.mix_prob = 1.0
  config.augment.mix_switch_prob = 0.5
  if recipe == 'rsb':
    config.batch_size = 2048
    config.batch_norm.group_size = 256   # per-GPU BatchNorm: 2048 over 8 GPUs (an assumption; timm uses no SyncBN)
    config.optimizer.name = 'lamb'
    config.optimizer.eps = 1e-6          # timm/optim/lamb.py defaults
    config.optimizer.clip_grad_norm = 1.0
    config.loss = 'bce'
    config.bce_target_threshold = 0.2
    config.input.interpolation = 'bicubic'
    config.input.eval_resize = 235       # timm: floor(224 / crop_pct 0.95)
  else:
    config.batch_size = 1024             # 8 GPUs x 128
    config.batch_norm.group_size = 128
    config.schedule.base_lr = 0.5
    config.total_epochs = 600.0
    config.optimizer.weight_decay = 2e-5
    config.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.2
    config.augment.cutmix_alpha = 1.0
    config.augment.auto_augment = 'trivialaugment'
    config.augment.random_erase_prob = 0.1
    config.augment.random_erase_mode = 'const'   # torchvision RandomErasing value=0
    config.repeated_augmentation = 4
    config.input.image_size = 176
    config.input.eval_resize = 232
    config.ema.decay = 0.998908
    config.ema.every_steps = 32


def get_config(row: str = 'resnet50'):
  spec = rows.lookup(ROWS, row)
  config = default.get_config()
  _apply_recipe(config, spec.recipe)
  rows.apply_row(config, row, spec)
  return config
