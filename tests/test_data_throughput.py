"""Input-throughput measurement functions (tiny sizes: only the interface and that they run)."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data import pipelines
from resnet_jax.data import throughput


def test_device_augment_throughput_reports_images_per_second():
  result = throughput.device_augment_throughput(num_examples=256, batch_size=32, steps=3, warmup=1)
  json.dumps(result)
  assert result['name'] == 'device_resident_augment' and result['images_per_sec'] > 0
  assert result['batch_size'] == 32 and result['devices'] == 2


def test_grain_imagenet_throughput_reports_each_worker_count(tmp_path):
  result = throughput.grain_imagenet_throughput(worker_counts=(0,), num_images=12, batch_size=4, batches=2,
                                                image_size=32, num_threads=2, data_dir=str(tmp_path / 'jpegs'))
  json.dumps(result)
  assert result['num_images'] == 12 and result['mean_jpeg_bytes'] > 10_000
  (row,) = result['results']
  assert row['num_workers'] == 0 and row['images_per_sec'] > 0 and row['eval_images_per_sec_incl_startup'] > 0


def test_apply_multi_view_averages_logits_over_views():
  images = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 2, 2, 1)
  apply = lambda x: jnp.stack([x.sum(axis=(1, 2, 3)), -x.sum(axis=(1, 2, 3))], axis=-1)
  logits = jax.jit(lambda x: pipelines.apply_multi_view(apply, x))(images)
  expected = np.asarray(images).reshape(2, 3, 4).sum(-1).mean(-1)
  np.testing.assert_allclose(np.asarray(logits)[:, 0], expected)
  np.testing.assert_allclose(np.asarray(pipelines.apply_multi_view(apply, images[:, 0])), apply(images[:, 0]))


def test_host_transform_cost_reports_milliseconds_per_image():
  result = throughput.host_transform_cost(num_images=2, repeats=1, image_size=64)
  json.dumps(result)
  assert set(result['ms_per_image']) >= {'decode_only', 'inception_crop', 'scale_crop', 'eval_ten_crop'}
  assert all(v > 0 for v in result['ms_per_image'].values())
