"""Input data: sources, augmentation and pipelines. No TensorFlow is imported on the training path.

  sources        open_split(name, split, data_dir): TFDS (ArrayRecord via tfds.data_source), npz:PATH, folder:ROOT
  prepare        python -m resnet_jax.data.prepare NAME: build a TFDS dataset in ArrayRecord format
  order          the one data order (seed, step) -> example indices, for every pipeline; the saved position
  augment        the per-batch device operations (pad-and-crop, flip) inside the jitted step, for every pipeline
  host_augment   host-side (PIL/NumPy) decode, ImageNet crops, colour jitter, PCA lighting, eval crops, ten-crop
  host_pipeline  per-process batch construction run by Grain workers (host operations, corrupt-image policy)
  normalization  the run's input normalisation, decided once (for_run; modes, ImageNet constants)
  streaming      StreamingTrainData (Grain + device prefetch, exact resume) and EvalData (padded, masked)
  pipelines      DeviceResidentData, make_train_data / make_eval_batches (choose by config), InputOptions (every
                 input option and its default)
  throughput     img/s of the device-resident and Grain paths on synthetic data
  synthetic      synthetic photographs for the benchmark (--synthetic, --input_only)
  digits         the built-in 8x8 digits TFDS dataset
"""
