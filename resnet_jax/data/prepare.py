"""Builds a TFDS dataset in ArrayRecord format, the format training reads (`tfds.data_source`).

    python -m resnet_jax.data.prepare NAME [--data_dir DIR] [--manual_dir DIR] [--download_dir DIR]

NAME is a TFDS name: cifar10, cifar100, svhn_cropped, imagenet2012, digits, ... The dataset is written to
DATA_DIR/NAME/VERSION/ (DATA_DIR: --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets); pass the same
directory as `config.dataset.data_dir` when training.

TensorFlow. TFDS builders whose examples have `Image` features encode the images with TensorFlow while
building (cifar10/100 and svhn_cropped encode PNGs; imagenet2012 copies the JPEGs but re-encodes its ~20 CMYK
and PNG files), so building them needs TensorFlow: `pip install -e '.[prepare]'` (tensorflow-cpu). Training
and evaluation never import TensorFlow: they read the ArrayRecord files and decode with PIL. `digits` (Tensor
features) builds without TensorFlow.

ImageNet (imagenet2012) cannot be downloaded automatically: register at https://image-net.org, download
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (about 150 GB) into one directory and pass it as
--manual_dir. Preparation takes hours and about 150 GB more disk in DATA_DIR.

Datasets already prepared in TFRecord format only (an older `tfds build`) must be built again here, or
converted with `tfds convert_format --dataset_dir=DATA_DIR/NAME/VERSION --out_file_format=array_record`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Optional, Sequence

from resnet_jax.errors import UserError

TF_INSTALL_HINT = "pip install -e '.[prepare]'"


def tensorflow_available() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def needs_tensorflow(builder) -> bool:
  """Whether building writes features that TFDS encodes with TensorFlow (images, videos)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if builder.name == 'digits':
    return False
  features = builder.info.features
  flat = features._flatten(features) if hasattr(features, '_flatten') else [features]  # pylint: disable=protected-access
  return any(isinstance(f, (tfds.features.Image, tfds.features.Video)) for f in flat)


def _manual_files_present(manual_dir: str, name: str) -> bool:
  if name == 'imagenet2012':
    return any(os.path.isfile(os.path.join(manual_dir, f))
               for f in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'))
  return os.path.isdir(manual_dir) and bool(os.listdir(manual_dir))


def prepare(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
            download_dir: Optional[str] = None) -> str:
  """Builds `name` in ArrayRecord format; returns the directory written. Raises UserError saying what to do."""
  if name.startswith(('npz:', 'folder:')):
    raise UserError(f"{name} is a local dataset and needs no preparation; use it directly as config.dataset.name")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name == 'digits':
    # Importing `digits` registers its TFDS builder; here, not at the top, because it imports tensorflow_datasets.
    from resnet_jax.data import digits  # pylint: disable=g-import-not-at-top,unused-import
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {name!r}: not a TFDS dataset name; use e.g. cifar10, cifar100, "
                    "imagenet2012, svhn_cropped, digits") from None

  if builder.is_prepared():
    try:
      tfds.data_source(name, split=next(iter(builder.info.splits)), data_dir=data_dir, download=False)
      return os.fspath(builder.data_dir)
    except Exception:  # pylint: disable=broad-except
      raise UserError(f"{name} is prepared in {builder.data_dir}, but not in ArrayRecord format; convert it "
                      f"with: tfds convert_format --dataset_dir={builder.data_dir} --out_file_format=array_record "
                      "(or delete that directory and run this command again)") from None

  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions:
    default_manual = os.path.join(download_dir or os.fspath(builder.data_dir_root / 'downloads'), 'manual')
    candidate = manual_dir or default_manual
    if not _manual_files_present(candidate, name):
      what = ('ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (register at https://image-net.org)'
              if name == 'imagenet2012' else 'the files described by the TFDS instructions: '
              + ' '.join(instructions.split()))
      raise UserError(f"{name} must be downloaded by hand: put {what} in one directory and pass it with "
                      f"--manual_dir DIR (looked in {candidate})")
    manual_dir = candidate

  if needs_tensorflow(builder) and not tensorflow_available():
    raise UserError(f"building {name} needs TensorFlow (TFDS encodes its images with it); install it with: "
                    f"{TF_INSTALL_HINT}  -- training itself never imports TensorFlow")

  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    builder.download_and_prepare(download_dir=download_dir, download_config=config, file_format='array_record')
  except ModuleNotFoundError as e:
    if 'tensorflow' in str(e):
      raise UserError(f"building {name} needs TensorFlow; install it with: {TF_INSTALL_HINT}") from None
    raise
  except (ConnectionError, OSError) as e:
    raise UserError(f"building {name} failed while downloading or reading its files ({type(e).__name__}: {e}); "
                    "check the network, or download the files by hand into --manual_dir") from None
  return os.fspath(builder.data_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.data.prepare',
                                   description='Build a TFDS dataset in ArrayRecord format for resnet_jax.')
  parser.add_argument('name', help='TFDS name, e.g. cifar10, cifar100, svhn_cropped, imagenet2012, digits')
  parser.add_argument('--data_dir', default=None, help='TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)')
  parser.add_argument('--manual_dir', default=None, help='directory with manually downloaded files (imagenet2012)')
  parser.add_argument('--download_dir', default=None, help='where downloads go (default DATA_DIR/downloads)')
  args = parser.parse_args(argv)
  try:
    path = prepare(args.name, args.data_dir, args.manual_dir, args.download_dir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(args.name, data_dir=args.data_dir)
  splits = ', '.join(f'{k}: {v.num_examples}' for k, v in sorted(builder.info.splits.items()))
  print(f'{args.name} is ready in {path} ({splits}); train with config.dataset.name={args.name!r}'
        + (f' and config.dataset.data_dir={args.data_dir!r}' if args.data_dir else ''))
  return 0


if __name__ == '__main__':
  sys.exit(main())
