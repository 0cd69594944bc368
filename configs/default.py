"""Base config: the CIFAR-10 recipe of He et al. 2015 (Sec. 4.2) and 2016 (appendix).

Every other config is a small diff of this one (`config = default.get_config(); config.x = ...`).
Durations take either `_steps` or `_epochs` (exactly one; see resnet_jax.config.resolve_steps).
"""

import ml_collections

from resnet_jax.data import pipelines


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

  # Input options. Each field, its default and its source (He et al. 2015 Sec. 4.2's CIFAR augmentation,
  # fb.resnet.torch's ImageNet crops and colour) is written once, in resnet_jax.data.pipelines.InputOptions:
  # dataset.pipeline ('auto': small datasets stay on the accelerators, large ones stream through Grain),
  # augment (small images, augmented inside jit; mixup/CutMix of every pipeline's batches: mixup_alpha,
  # cutmix_alpha, mix_prob, mix_switch_prob, off by default) and input (large images and the streaming machinery).
  # mean/std: None computes them from the training split; a tuple overrides them (--config.input.mean=...).
  config.dataset.update(pipelines.option_defaults('dataset'))
  config.augment = ml_collections.ConfigDict(pipelines.option_defaults('augment'))
  config.input = ml_collections.ConfigDict({**pipelines.option_defaults('input'),
                                            'mean': ml_collections.config_dict.placeholder(tuple),
                                            'std': ml_collections.config_dict.placeholder(tuple)})

  config.batch_size = 128            # global, over all devices and hosts
  # Gradient accumulation: the optimizer steps once per `accumulate_steps` micro-batches of batch_size /
  # accumulate_steps examples, each with its own BatchNorm statistics (the recipes' per-GPU BN), so that the
  # batch-2048 / 1024 recipes ("ResNet strikes back", torchvision v2) keep their global batch, learning rate and
  # schedule on hardware that holds only a fraction of the batch. One optimizer step is one step everywhere
  # (schedule, logging, checkpoints). It must divide the per-device batch.
  config.accumulate_steps = 1
  # Repeated augmentation: each global batch holds batch_size / k distinct examples, each k times, every copy
  # augmented on its own (Hoffer et al. 2020; timm's RepeatAugSampler, torchvision's --ra-sampler --ra-reps 4;
  # "ResNet strikes back" A1/A2 and torchvision's v2 recipe). 1 = off. resnet_jax.data.order.repeated_positions.
  config.repeated_augmentation = 1
  config.eval_batch_size = 500       # global
  config.total_steps = 64_000
  config.total_epochs = ml_collections.config_dict.placeholder(float)

  # name: 'sgd' (the papers), 'lamb' and 'lars' (layer-wise trust ratio; "ResNet strikes back" trains with LAMB),
  # 'adamw'; resnet_jax.optim.update_rule says what each is.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9    # sgd, lars
  config.optimizer.nesterov = False  # sgd, lars
  # sgd: coupled L2 (added to the gradient before momentum, as the papers' SGD); lamb/lars/adamw: decoupled.
  # 'all' decays every parameter (fb.resnet.torch), 'kernels' only conv/dense kernels (excludes BN and biases,
  # as the modern recipes; for lamb/lars the trust ratio follows the same mask, as timm's).
  config.optimizer.weight_decay = 1e-4
  config.optimizer.weight_decay_on = 'all'
  config.optimizer.betas = (0.9, 0.999)  # lamb, adamw
  config.optimizer.eps = ml_collections.config_dict.placeholder(float)  # None: lamb 1e-6 (timm), adamw 1e-8
  config.optimizer.trust_coefficient = 0.001  # lars (You et al. 2017's eta)
  # Clip the global gradient norm before the update (None: no clip; timm's Lamb clips at 1.0).
  config.optimizer.clip_grad_norm = ml_collections.config_dict.placeholder(float)
  # Learning-rate factors of parameter groups: {pattern: factor}, the first matching pattern applies (patterns
  # as config.freeze's), e.g. {'head': 10.0}; on the command line --config.optimizer.lr_multipliers=head=10,stage3=2.
  config.optimizer.lr_multipliers = ml_collections.config_dict.placeholder(object)

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
  # The training loss (resnet_jax.losses): 'softmax' cross-entropy (the ResNet papers) or 'bce', the sigmoid
  # binary cross-entropy of "ResNet strikes back" (Wightman et al. 2021, A1-A3). bce_target_threshold: with
  # 'bce', targets above it become 1 and the rest 0 (timm's --bce-target-thresh; 0.2 in the RSB configs).
  config.loss = 'softmax'
  config.bce_target_threshold = ml_collections.config_dict.placeholder(float)

  # Exponential moving average of the weights and BatchNorm statistics, evaluated beside the raw weights
  # ("ResNet strikes back", Wightman et al. 2021; torchvision's v2 recipe). After every `every_steps` steps:
  # ema = decay * ema + (1 - decay) * weights. decay 0 = off. warmup: timm's ModelEmaV3 ramp
  # min(decay, 1 - (1 + updates)^(-2/3)), so that early averages are not dominated by the random initialisation.
  # use: evaluation (--mode eval), checkpoints.load, predict and the analyses take the EMA weights when the run
  # has them (--config.ema.use=false: the raw weights).
  config.ema = ml_collections.ConfigDict()
  config.ema.decay = 0.0
  config.ema.every_steps = 1
  config.ema.warmup = False
  config.ema.use = True

  # Fine-tuning (resnet_jax.finetune). init_from: a workdir (its latest checkpoint), a directory written by
  # `python -m resnet_jax.convert`, or a torchvision/timm .safetensors/.pth/.pt/.bin file (converted for
  # config.model.name); read only when the workdir has no checkpoint of its own. Variables are copied by name;
  # init_exclude (regexes over paths such as 'stage1_unit1/conv1/kernel', or stage names) start fresh, by default
  # the head when its shape differs from the source's. freeze: regexes or stage names ('stem', 'stage1'..'stage4',
  # 'head') whose parameters get no update and no weight decay, e.g. --config.freeze=stem,stage1.
  config.init_from = ''
  config.init_exclude = ml_collections.config_dict.placeholder(object)
  config.freeze = ml_collections.config_dict.placeholder(object)

  # BatchNorm statistics: 'global' over the whole global batch (synced across devices and hosts), or
  # 'ghost' over groups of `group_size` examples (the papers' per-GPU BN: 64 per GPU on CIFAR).
  config.batch_norm = ml_collections.ConfigDict()
  config.batch_norm.mode = 'global'
  config.batch_norm.group_size = ml_collections.config_dict.placeholder(int)
  # BatchNorm layers whose parameters config.freeze freezes also normalise with (and keep) their running
  # statistics during training (a frozen backbone, as detection fine-tuning uses); False: batch statistics.
  config.batch_norm.freeze_frozen_stats = True

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
