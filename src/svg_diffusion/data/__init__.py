"""Datasets (Fashion-MNIST, image folders), their config and the batch augmentation.

Items are (image float32 [3, S, S] in [-1, 1], label int); datasets are deterministic and augmentation is
applied to batches with an explicit generator (``random_hflip``). Which indices each process reads is the
training foundation's business (``svg_diffusion.training.sharding``).
"""

from .config import DataConfig, build_dataset
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import DEFAULT_DIR as FASHION_MNIST_DIR
from .fashion_mnist import FashionMNIST
from .image_folder import ImageFolder
from .transforms import center_crop_resize, random_hflip, to_rgb

__all__ = [
    "DataConfig",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FashionMNIST",
    "ImageFolder",
    "build_dataset",
    "center_crop_resize",
    "random_hflip",
    "to_rgb",
]
