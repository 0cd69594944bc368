"""Quickstart: a pre-activation ResNet-20 (He et al. 2016, full pre-activation units) on the embedded `digits`
dataset (1,797 8x8 grey images, resnet_jax.data.digits). Timings: the README and benchmarks/results/.

  python -m resnet_jax.main --config configs/quickstart.py --workdir runs/quickstart
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'cifar_preact_resnet20'
  config.dataset.name = 'digits'
  config.augment.crop_padding = 1    # 8x8 images: a 1-pixel shift is the CIFAR 4-pixel shift at this scale
  config.augment.flip = False        # a mirrored digit is a different (or no) digit
  config.batch_size = 64
  config.total_epochs = 20.0
  config.total_steps = None
  config.schedule.boundaries_steps = None
  config.schedule.boundaries_epochs = (10.0, 15.0)
  config.schedule.warmup = 'none'
  config.schedule.warmup_steps = None
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 20
  config.eval_every_steps = None
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = None
  config.checkpoint_every_epochs = 10.0
  return config
