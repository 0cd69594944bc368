"""Base config: the CIFAR-10 recipe of He et al. 2015 (Sec. 4.2) and 2016 (appendix).

Every other config is a small diff of this one (`config = default.get_config(); config.x = ...`).
Durations take either `_steps` or `_epochs` (exactly one; see resnet_jax.config.resolve_steps).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: `name` is a registry name (resnet_jax.models.list_models()); every other key is passed to
  # create_model as an option, e.g. --config.model.shortcut=exclusive_gate. `dtype` is the compute dtype:
  # 'auto' = bfloat16 on GPU/TPU, float32 on CPU. Parameters, BN statistics, logits and loss stay float32.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'cifar_resnet110'
  config.model.dtype = 'auto'

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'cifar10'    # TFDS name, 'npz:PATH' or 'folder:PATH'
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default / $TFDS_DATA_DIR
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'test'
  # Input pipeline: 'auto' keeps small datasets resident on the accelerators (augmented inside jit) and
  # streams large ones through Grain; 'device' or 'grain' force one.
  config.dataset.pipeline = 'auto'

  # Augmentation for small (CIFAR-like) images, He et al. 2015 Sec. 4.2: pad 4 pixels on each side, take a
  # random crop of the original size, flip horizontally with probability 1/2.
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 4
  config.augment.flip = True
  # 'per_channel': (x - mean_c) / std_c with statistics of the training split (fb.resnet.torch);
  # 'per_pixel_mean': x - mean image, the "per-pixel mean subtracted" of He et al. 2015.
  config.augment.normalization = 'per_channel'
  # fb.resnet.torch normalises before padding, so padding shows the mean colour; False pads with black.
  config.augment.pad_after_normalize = True

  # Input pipeline options (resnet_jax.data.pipelines.input_options documents each). Small images use the
  # device-resident path and `augment` above; large ones (ImageNet) stream through Grain with these.
  config.input = ml_collections.ConfigDict()
  config.input.device_max_bytes = 2 * 1024**3  # 'auto': splits up to this size stay on the devices
  config.input.train_crop = 'auto'     # 'inception' | 'scale' (He et al. 2015) | 'pad_crop' | 'none'
  config.input.image_size = 224
  config.input.scale_range = (256, 480)
  config.input.area_range = (0.08, 1.0)
  config.input.aspect_range = (3 / 4, 4 / 3)
  config.input.color_jitter = 0.0      # fb.resnet.torch: 0.4
  config.input.pca_lighting = 0.0      # fb.resnet.torch: 0.1
  config.input.interpolation = 'bilinear'
  config.input.eval_crop_mode = 'auto'  # 'center' | 'ten' | 'none'
  config.input.eval_resize = 256       # He et al. 2016 Table 5's 320 test: eval_resize=320, eval_crop=320
  config.input.eval_crop = 224
  config.input.num_workers = -1        # Grain worker processes (-1: CPU cores - 1, at most 16)
  config.input.num_threads = 2
  config.input.eval_num_workers = -1
  config.input.prefetch = 2
  config.input.corrupt_images = 'fail'  # or 'skip' (each skip is logged)
  config.input.mean = ml_collections.config_dict.placeholder(tuple)
  config.input.std = ml_collections.config_dict.placeholder(tuple)
  config.input.stats_examples = 5000

  config.batch_size = 128            # global, over all devices and hosts
  config.eval_batch_size = 500       # global
  config.total_steps = 64_000
  config.total_epochs = ml_collections.config_dict.placeholder(float)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  # Coupled L2 (added to the gradient before momentum, as the papers' SGD). 'all' decays every parameter
  # (fb.resnet.torch), 'kernels' only conv/dense kernels (excludes BN and biases).
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_on = 'all'

  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = 'step'      # 'step', 'cosine' or 'constant'
  config.schedule.base_lr = 0.1
  # If set, lr = base_lr * batch_size / reference_batch_size (Goyal et al. 2017 linear scaling).
  config.schedule.reference_batch_size = ml_collections.config_dict.placeholder(int)
  config.schedule.decay_factor = 0.1
  config.schedule.boundaries_steps = (32_000, 48_000)
  config.schedule.boundaries_epochs = ml_collections.config_dict.placeholder(tuple)
  # Warm-up: 'constant' holds base_lr * warmup_factor (He et al. 2016: 0.01 for the first 400 iterations),
  # 'linear' ramps from 0 to base_lr, 'none' skips it.
  config.schedule.warmup = 'constant'
  config.schedule.warmup_factor = 0.1
  config.schedule.warmup_steps = 400
  config.schedule.warmup_epochs = ml_collections.config_dict.placeholder(float)

  config.label_smoothing = 0.0

  # BatchNorm statistics: 'global' over the whole global batch (synced across devices and hosts), or
  # 'ghost' over groups of `group_size` examples (the papers' per-GPU BN: 64 per GPU on CIFAR).
  config.batch_norm = ml_collections.ConfigDict()
  config.batch_norm.mode = 'global'
  config.batch_norm.group_size = ml_collections.config_dict.placeholder(int)

  config.log_every_steps = 100
  config.eval_every_steps = 2_000
  config.eval_every_epochs = ml_collections.config_dict.placeholder(float)
  config.checkpoint_every_steps = 2_000
  config.checkpoint_every_epochs = ml_collections.config_dict.placeholder(float)
  config.keep_checkpoints = 3        # the latest N, plus the best by `best_metric`
  config.best_metric = 'test_accuracy'
  # NaN/Inf in the loss or gradients: 'stop' raises an error naming the step (the last good checkpoint is
  # kept); 'skip' leaves parameters unchanged for that step and counts it in metrics.jsonl.
  config.on_nonfinite = 'stop'
  # Train steps run per dispatch from the host (lax.scan) when the data is device-resident.
  config.steps_per_dispatch = 1
  # Persistent XLA compilation cache (e.g. ~/.cache/resnet_jax/xla), shared by runs: a resumed or repeated run
  # loads its compiled steps instead of compiling them. '' = none (JAX_COMPILATION_CACHE_DIR still applies).
  config.compilation_cache_dir = ''
  return config
