"""Input-pipeline throughput (images per second), on synthetic data generated here: no dataset needed.

  device_augment_throughput()   the device-resident CIFAR path: jitted gather of a global batch from a
                                50k x 32 x 32 x 3 uint8 split held on the devices + pad/crop/flip
  host_transform_cost()         CPU ms per image of each host transform (decode, crops, colour, eval crops),
                                in one thread: the per-core capacity, insensitive to other load
  grain_imagenet_throughput()   the Grain streaming ImageNet path: JPEG decode + random-sized (or scale) crop
                                (+ colour) on the host, batches assembled into sharded global arrays,
                                for each number of worker processes; on synthetic photographs at ImageNet
                                sizes written as a `folder:` dataset in a temporary directory

Both return a JSON-able dict (`resnet_jax.benchmark --input_only` calls them); `python -m
resnet_jax.data.throughput` prints both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import parallel
from resnet_jax.data import augment
from resnet_jax.data import host_augment
from resnet_jax.data import host_pipeline
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.data import streaming
from resnet_jax.data import synthetic


def device_augment_throughput(*, num_examples: int = 50_000, image_shape: Sequence[int] = (32, 32, 3),
                              batch_size: int = 128, steps: int = 200, warmup: int = 5, seed: int = 0,
                              mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, Any]:
  """img/s of producing augmented training batches on the devices (no model): gather + pad/crop + flip."""
  mesh = mesh or parallel.make_mesh()
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  images = np.random.default_rng(seed).integers(0, 256, (num_examples,) + tuple(image_shape), dtype=np.uint8)
  labels = np.arange(num_examples) % 10
  data = pipelines.DeviceResidentData.from_arrays({'image': images, 'label': labels}, mesh, batch_size, seed)
  # The training run's own device operations (default options), centred on these images' channel means.
  small_image_augment = pipelines.device_augmentation(pipelines.InputOptions(), 'pad_crop',
                                                      tuple(images.mean(axis=(0, 1, 2))))

  @jax.jit
  def produce(arrays, step):
    batch = data.batch(arrays, step)
    return small_image_augment(jax.random.fold_in(jax.random.key(seed), step), batch['image']), batch['label']

  start = time.perf_counter()
  jax.block_until_ready(produce(data.arrays, jnp.int32(0)))
  compile_seconds = time.perf_counter() - start
  for step in range(1, warmup + 1):
    out = produce(data.arrays, jnp.int32(step))
  jax.block_until_ready(out)
  start = time.perf_counter()
  for step in range(warmup + 1, warmup + 1 + steps):
    out = produce(data.arrays, jnp.int32(step))
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  return {'name': 'device_resident_augment', 'images_per_sec': steps * batch_size / seconds,
          'batch_size': batch_size, 'steps': steps, 'seconds': seconds, 'compile_seconds': compile_seconds,
          'num_examples': num_examples, 'image_shape': list(image_shape), 'devices': int(mesh.devices.size),
          'backend': jax.default_backend()}


def make_synthetic_jpeg_folder(root: str, num_images: int = 512, num_classes: int = 10, seed: int = 0) -> dict:
  """Writes ImageNet-like JPEGs (about 500 x 375, quality 90) to ROOT/<class>/; returns their statistics."""
  total = synthetic.write_jpeg_folder(root, num_images, num_classes, seed)
  return {'num_images': num_images, 'mean_jpeg_bytes': total / num_images}


def grain_imagenet_throughput(*, worker_counts: Sequence[int] = (0, 1, 2), num_images: int = 512,
                              batch_size: int = 64, batches: int = 16, image_size: int = 224,
                              train_crop: str = 'inception', color_jitter: float = 0.0, pca_lighting: float = 0.0,
                              num_threads: int = 2, data_dir: Optional[str] = None,
                              mesh: Optional[jax.sharding.Mesh] = None, include_eval: bool = True,
                              auto_augment: str = '') -> dict[str, Any]:
  """img/s of the Grain streaming path on synthetic JPEGs, per worker-process count.

  For each count: `startup_seconds` (first batch: worker start-up plus pipeline fill) and `images_per_sec`
  over the next `batches` global batches, delivered as sharded device arrays. With include_eval, the same
  for evaluation batches (shorter side 256, centre 224 crop). `num_workers=0` builds batches in
  `num_threads` threads of this process.
  """
  mesh = mesh or parallel.make_mesh()
  batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  own_dir = data_dir is None
  root = tempfile.mkdtemp(prefix='resnet_jax_jpegs_') if own_dir else data_dir
  try:
    if not os.path.isdir(root) or not os.listdir(root):
      info = make_synthetic_jpeg_folder(root, num_images)
    else:
      info = {'num_images': None, 'mean_jpeg_bytes': None}
    source = sources.open_split(f'folder:{root}', 'train')
    info['num_images'] = len(source)
    transform = host_pipeline.TrainTransform(crop=train_crop, image_size=image_size,
                                             color_jitter=color_jitter, pca_lighting=pca_lighting,
                                             auto_augment=auto_augment)
    eval_transform = host_pipeline.EvalTransform(crop='center', resize=round(image_size * 256 / 224),
                                                 crop_size=image_size)
    results = []
    for workers in worker_counts:
      row = {'num_workers': int(workers), 'num_threads': int(num_threads)}
      data = streaming.StreamingTrainData(source, mesh, batch_size, 0, transform, augment.SmallImageAugment(0),
                                          num_workers=workers, num_threads=num_threads, prefetch=2)
      try:
        start = time.perf_counter()
        jax.block_until_ready(next(data))
        row['startup_seconds'] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
          out = next(data)
        jax.block_until_ready(out)
        row['images_per_sec'] = batches * batch_size / (time.perf_counter() - start)
      finally:
        data.close()
      if include_eval:
        eval_data = streaming.EvalData(source, mesh, batch_size, eval_transform, num_workers=workers,
                                       num_threads=num_threads)
        count = 0
        start = time.perf_counter()
        for batch in eval_data:
          jax.block_until_ready(batch)
          count += batch_size
        row['eval_images_per_sec_incl_startup'] = count / (time.perf_counter() - start)
      results.append(row)
  finally:
    if own_dir:
      shutil.rmtree(root, ignore_errors=True)
  return {'name': 'grain_imagenet', 'train_crop': train_crop, 'image_size': image_size, 'batch_size': batch_size,
          'batches': batches, 'color_jitter': color_jitter, 'pca_lighting': pca_lighting,
          'cpu_count': os.cpu_count(), 'devices': int(mesh.devices.size), 'results': results, **info}


def host_transform_cost(*, num_images: int = 64, repeats: int = 3, image_size: int = 224,
                        seed: int = 0) -> dict[str, Any]:
  """CPU milliseconds per image of each host transform, measured in one thread with `time.process_time`
  (so other load on the machine does not inflate it); 1000 / ms is the img/s one core sustains."""
  rng = np.random.default_rng(seed)
  sizes = ((375, 500), (500, 375), (333, 500), (480, 640), (500, 500), (281, 500))
  raws = [synthetic.jpeg_bytes(synthetic.synthetic_photo(rng, *sizes[i % len(sizes)]))
          for i in range(num_images)]
  resize = round(image_size * 256 / 224)
  transforms = {
      'decode_only': lambda raw, r: host_augment.decode(raw),
      'inception_crop': host_pipeline.TrainTransform('inception', image_size),
      'scale_crop': host_pipeline.TrainTransform('scale', image_size),
      'inception_color_jitter_lighting': host_pipeline.TrainTransform('inception', image_size,
                                                                           color_jitter=0.4, pca_lighting=0.1),
      'eval_center_crop': lambda raw, r: host_augment.center_crop(raw, resize, image_size),
      'eval_ten_crop': lambda raw, r: host_augment.ten_crop_views(host_augment.resize_shorter(raw, resize),
                                                                  image_size),
  }
  result = {'name': 'host_transform_cost', 'mean_jpeg_bytes': float(np.mean([len(r) for r in raws])),
            'ms_per_image': {}}
  for name, transform in transforms.items():
    best = float('inf')
    for _ in range(repeats):
      start = time.process_time()
      for q, raw in enumerate(raws):
        transform(raw, host_pipeline.example_rng(seed, q))
      best = min(best, (time.process_time() - start) / len(raws) * 1000)
    result['ms_per_image'][name] = best
  return result


def main() -> None:
  print(json.dumps(host_transform_cost(), indent=1))
  print(json.dumps(device_augment_throughput(), indent=1))
  print(json.dumps(grain_imagenet_throughput(), indent=1))


if __name__ == '__main__':
  main()
