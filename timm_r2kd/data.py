"""Datasets: timm's ``create_dataset``, plus an offline reader for (Fashion-)MNIST idx files.

torchvision's MNIST-style datasets look for uncompressed files under ``<root>/<Name>/raw`` and
otherwise want to download. Debian's ``dataset-fashion-mnist`` ships the four ``*-idx?-ubyte.gz``
files in one folder (``/usr/share/datasets/fashion-mnist``), so ``torch/fashion_mnist`` and
``torch/mnist`` read those gzip files directly when they are found under ``--data-dir``.
"""
import gzip
import logging
import os
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import RandomCrop

_logger = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
# Fashion-MNIST's own pixel statistics (its 60,000 training images)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)
MNIST_CLASSES = tuple(str(i) for i in range(10))

IDX_DATASETS = {
    'fashion_mnist': ('FashionMNIST', FASHION_MNIST_CLASSES),
    'mnist': ('MNIST', MNIST_CLASSES),
}
_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('validation', 'val', 'test', 't10k')


def _read_idx(path: str) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) as a numpy array."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"'{path}' is not an unsigned-byte idx file.")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"'{path}' is truncated or corrupt: {len(data) - header} bytes of data for shape {shape}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def parse_split(split: str) -> Tuple[str, Optional[slice]]:
    """'train[50000:]' -> ('train', slice(50000, None)): a split name with an optional Python slice of it,
    as timm's Hugging Face readers take (here for the idx datasets: a validation split carved from train)."""
    m = re.fullmatch(r'(\w+)\[(-?\d*):(-?\d*)\]', split)
    if m is None:
        return split, None
    return m.group(1), slice(int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None)


def idx_prefix(split: str) -> str:
    """The idx file-name prefix of a split: 'train' for train/training (sliced or not), else 't10k'."""
    return 'train' if parse_split(split)[0] in _TRAIN_SPLITS else 't10k'


def find_idx_files(root: str, split: str, folder_name: str = 'FashionMNIST') -> Optional[List[str]]:
    """[images, labels] idx paths for ``split`` under ``root`` (or ``root/<folder_name>/raw``), or None."""
    prefix = idx_prefix(split)
    for folder in (root, os.path.join(root, folder_name, 'raw'), os.path.join(root, 'raw')):
        for ext in ('.gz', ''):
            images = os.path.join(folder, f'{prefix}-images-idx3-ubyte{ext}')
            labels = os.path.join(folder, f'{prefix}-labels-idx1-ubyte{ext}')
            if os.path.isfile(images) and os.path.isfile(labels):
                return [images, labels]
    return None


class IdxImageDataset(torch.utils.data.Dataset):
    """Images and labels from a pair of idx files (the (Fashion-)MNIST format).

    Args:
        images_path: idx3 image file, optionally .gz.
        labels_path: idx1 label file, optionally .gz.
        transform: Applied to each PIL image.
        input_img_mode: PIL mode to convert images to ('L' keeps one channel, 'RGB' replicates it).
        label_names: Class names, index order.
    """

    def __init__(
            self,
            images_path: str,
            labels_path: str,
            transform: Optional[Callable] = None,
            input_img_mode: str = 'L',
            label_names: Optional[tuple] = None,
    ):
        self.images = _read_idx(images_path)
        self.targets = _read_idx(labels_path).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise ValueError(f'{len(self.images)} images but {len(self.targets)} labels in {images_path}.')
        self.transform = transform
        self.input_img_mode = input_img_mode
        self.label_names = label_names

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode='L')
        if self.input_img_mode != 'L':
            img = img.convert(self.input_img_mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


class DatasetWrapper(torch.utils.data.Dataset):
    """A dataset wrapping another: ``transform`` is the wrapped one's (so timm's ``create_loader`` can
    set it), and attributes it does not have itself (``label_names`` ...) are the wrapped one's."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getattr__(self, name: str) -> Any:
        # called only for attributes not found normally
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)


class SubsetDataset(DatasetWrapper):
    """The first ``num_samples`` items of a map-style dataset, or the items at ``indices``.

    Args:
        dataset: The dataset.
        num_samples: Keep the first this many (of ``indices``, when given).
        indices: The items to keep, in order (default: all).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, num_samples: Optional[int] = None,
                 indices: Optional[Sequence[int]] = None):
        super().__init__(dataset)
        self.indices = range(len(dataset)) if indices is None else indices
        if num_samples is not None:
            self.indices = self.indices[:num_samples]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        if index >= len(self.indices):
            raise IndexError(index)
        return self.dataset[self.indices[index]]


def create_r2kd_dataset(
        name: str,
        root: Optional[str],
        split: str,
        is_training: bool,
        num_samples: Optional[int] = None,
        input_img_mode: str = 'RGB',
        **kwargs,
):
    """Create a dataset as timm's ``create_dataset`` does, with offline idx files and subsetting.

    Args:
        name: timm dataset name ('' for a folder, 'torch/fashion_mnist', 'hfds/...', ...).
        root: Data folder.
        split: Split name ('train', 'validation', ...).
        is_training: Training split (affects iterable datasets).
        num_samples: Keep only the first N samples of a map-style dataset (iterable datasets get it
            as timm's ``num_samples``).
        input_img_mode: PIL mode of the images.
        **kwargs: Passed to ``timm.data.create_dataset``.
    """
    key = name.lower().split('/', 1)[-1] if name.lower().startswith('torch/') else None
    dataset = None
    if key in IDX_DATASETS:
        folder_name, label_names = IDX_DATASETS[key]
        # Debian's copy only when no folder is named: a named folder is never silently replaced
        folder = root or (DEBIAN_FASHION_MNIST if key == 'fashion_mnist' else None)
        files = find_idx_files(folder, split, folder_name) if folder else None
        if files:
            dataset = IdxImageDataset(*files, input_img_mode=input_img_mode, label_names=label_names)
            part = parse_split(split)[1]
            if part is not None:
                dataset = SubsetDataset(dataset, indices=range(len(dataset))[part])
            _logger.info(f'Reading {name} {split} from {os.path.dirname(files[0])} ({len(dataset)} images).')
        elif not kwargs.get('download'):
            hint = ' (Debian: apt-get install dataset-fashion-mnist)' if key == 'fashion_mnist' else ''
            raise FileNotFoundError(
                f"No {name} idx files for split '{split}' under '{root}'{hint}. Point --data-dir at the folder "
                f"holding {idx_prefix(split)}-images-idx3-ubyte.gz, or pass "
                f"--dataset-download to let torchvision download it.")
    if dataset is None:
        if not name and root and os.path.isdir(root) and not any(os.scandir(root)):
            raise FileNotFoundError(f"Dataset folder '{root}' is empty. Point --data-dir at an image folder "
                                    f"with one sub-folder per class (or use --dataset).")
        dataset = create_dataset(
            name, root=root, split=split, is_training=is_training, num_samples=num_samples,
            input_img_mode=input_img_mode, **kwargs)
    if num_samples and hasattr(dataset, '__len__') and not isinstance(dataset, torch.utils.data.IterableDataset):
        dataset = SubsetDataset(dataset, num_samples)
    if hasattr(dataset, '__len__') and len(dataset) == 0:
        raise ValueError(f"Dataset '{name or root}' split '{split}' is empty. Check --data-dir and the split names.")
    return dataset


def dataset_label_names(dataset) -> Optional[List[str]]:
    """Class names of a dataset in index order, when it knows them."""
    names = getattr(dataset, 'label_names', None)
    if names:
        return list(names)
    reader = getattr(dataset, 'reader', None)
    class_to_idx = getattr(reader, 'class_to_idx', None)
    if class_to_idx:
        return [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    classes = getattr(getattr(dataset, 'dataset', None), 'classes', None) or getattr(reader, 'classes', None)
    return list(classes) if classes else None


def use_pad_crop(dataset, size: int, padding: int) -> None:
    """Swap the random-resized crop of a dataset's timm training transform for CIFAR's crop.

    CIFAR recipes pad the image by ``padding`` pixels (zeros) and take a random ``size`` crop;
    timm's training transform has no such mode, so the crop stage is replaced in place.
    """
    transform = dataset.transform
    stages = transform if isinstance(transform, (tuple, list)) else [transform]
    for stage in stages:
        steps = getattr(stage, 'transforms', [])
        for i, step in enumerate(steps):
            if isinstance(step, RandomResizedCropAndInterpolation):
                steps[i] = RandomCrop(size, padding=padding)
                return
    raise ValueError('--crop-padding needs timm\'s random-resized-crop training transform (drop --no-aug '
                     'and --train-crop-mode).')
