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
Published errors are top-1 (%) on the validation set with the row's test protocol.
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
  if recipe not in ('fb_resnet_torch', 'bag_of_tricks', 'he2015'):
    raise ValueError(recipe)
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


def get_config(row: str = 'resnet50'):
  spec = rows.lookup(ROWS, row)
  config = default.get_config()
  _apply_recipe(config, spec.recipe)
  rows.apply_row(config, row, spec)
  return config
