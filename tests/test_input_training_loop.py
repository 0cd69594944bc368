"""The streaming input driving a jitted train step and a ten-crop evaluation, as train.py / evaluate.py wire it:
Classifier(mean, std from the pipeline), device_augment in the step, get_state/set_state around a restart,
apply_multi_view for multi-crop evaluation with masked sums."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import classifier
from resnet_jax import models
from resnet_jax import parallel
from resnet_jax.data import pipelines
from resnet_jax.data import sources
from resnet_jax.data import testing
from resnet_jax.losses import cross_entropy


def test_streaming_train_steps_resume_and_ten_crop_evaluation(tmp_path):
  testing.write_image_folder(str(tmp_path), classes=('a', 'b', 'c'), per_class=8, splits=('train', 'test'),
                             sizes=((40, 52), (52, 40)), fmt='JPEG')
  name = f'folder:{tmp_path}'
  config = ml_collections.ConfigDict({
      'seed': 0, 'batch_size': 8, 'eval_batch_size': 10,
      'dataset': {'name': name, 'pipeline': 'auto', 'train_split': 'train', 'eval_split': 'test'},
      'augment': {'crop_padding': 4, 'flip': True, 'normalization': 'per_channel', 'pad_after_normalize': True},
      'input': {'image_size': 32, 'eval_resize': 36, 'eval_crop': 32, 'eval_crop_mode': 'ten', 'num_workers': 0}})
  mesh = parallel.make_mesh()
  train_source = sources.open_split(name, 'train')
  data = pipelines.make_train_data(config, mesh, train_source)
  assert data.kind == 'grain' and data.image_shape == (32, 32, 3)  # sizes vary: streamed, inception crops
  backbone = models.create_model('cifar_resnet20', num_classes=data.num_classes, stage_widths=(4, 8, 8),
                                 dtype=jnp.float32)
  model = classifier.Classifier(backbone=backbone, mean=data.mean, std=data.std)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + data.image_shape), train=False)
  tx = optax.sgd(0.1, momentum=0.9)
  replicated = parallel.replicated(mesh)
  state = jax.device_put({'params': variables['params'], 'batch_stats': variables['batch_stats'],
                          'opt': tx.init(variables['params'])}, replicated)

  @jax.jit
  def train_step(state, batch, step):
    images = data.device_augment(jax.random.fold_in(jax.random.key(1), step), batch['image'])

    def loss_fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state['batch_stats']}, images, train=True,
                                    mutable=['batch_stats'])
      return jnp.mean(cross_entropy(logits, batch['label'])), updates['batch_stats']

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt = tx.update(grads, state['opt'], state['params'])
    return {'params': optax.apply_updates(state['params'], updates), 'batch_stats': stats, 'opt': opt}, loss

  losses = []
  for step in range(2):
    state, loss = train_step(state, next(data), step)
    losses.append(float(loss))
  saved = json.dumps(data.get_state())  # what goes into the checkpoint metadata
  data.close()
  # "Restart": a new pipeline continues at the saved position.
  data = pipelines.make_train_data(config, mesh, train_source)
  data.set_state(json.loads(saved))
  assert data.step == 2
  state, loss = train_step(state, next(data), 2)
  losses.append(float(loss))
  data.close()
  assert all(np.isfinite(losses))

  eval_data = pipelines.make_eval_batches(config, mesh, sources.open_split(name, 'test'))
  assert eval_data.views == 10 and eval_data.image_shape == (10, 32, 32, 3)

  @jax.jit
  def eval_step(variables, batch):
    logits = pipelines.apply_multi_view(lambda x: model.apply(variables, x, train=False), batch['image'])
    mask = batch['mask'].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return jnp.sum(correct * mask), jnp.sum(mask)

  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  totals = np.zeros(2)
  for batch in eval_data:
    totals += np.asarray(jax.tree.map(float, eval_step(variables, batch)))
  assert totals[1] == 24 and 0 <= totals[0] <= 24
