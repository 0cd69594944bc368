"""`digits`: the UCI optical-recognition handwritten digits that scikit-learn ships, as a TFDS dataset.

1,797 grey 8x8 images of the digits 0-9 (Alpaydin & Kaynak, UCI ML repository, CC BY 4.0), embedded in this
package (`digits.npz`) so the quickstart and the tests need no download. Pixels are the original 0..16 counts
scaled to uint8 as min(255, 16 * v). Images are (8, 8, 1) uint8; labels 0..9.

Fixed, stratified split: within each class, in scikit-learn's order (`sklearn.datasets.load_digits`), every
fifth example (ranks 0, 5, 10, ...) is a test example. test = 364 images (35-37 per class), train = 1,433.
Writers overlap between the splits, as in the usual random 80/20 split of this dataset.

The builder writes ArrayRecord files with `Tensor` features, so building needs no TensorFlow; it is built on
first use (`tfds.data_source('digits')`, after importing this module) into the TFDS data dir.
"""

import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
TEST_EVERY = 5


def load_arrays():
  """Returns (images uint8 [1797, 8, 8, 1], labels uint8 [1797]) in scikit-learn's order."""
  with importlib.resources.files('resnet_jax.data').joinpath('digits.npz').open('rb') as f:
    arrays = np.load(f)
    return arrays['images'], arrays['labels']


def test_mask(labels: np.ndarray) -> np.ndarray:
  """True for test examples: those whose rank within their class is a multiple of TEST_EVERY."""
  rank = np.zeros(len(labels), np.int64)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    rank[members] = np.arange(len(members))
  return rank % TEST_EVERY == 0


class Digits(tfds.core.GeneratorBasedBuilder):
  """UCI handwritten digits (scikit-learn's copy), 8x8 grey, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified split, every fifth example of each class is test.'}

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # embedded: nothing to download
    images, labels = load_arrays()
    test = test_mask(labels)
    return {
        'train': self._generate_examples(images, labels, np.flatnonzero(~test)),
        'test': self._generate_examples(images, labels, np.flatnonzero(test)),
    }

  def _generate_examples(self, images, labels, indices):
    for index in indices:
      yield int(index), {'image': images[index], 'label': int(labels[index])}
