"""Data sources (demo, image folder, tar, local torchvision datasets) and batched on-device augmentation."""
from leankd.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageAugment,
    normalize,
    random_crop,
    random_hflip,
)
from leankd.data.images import ImageSource, ImageSplit, load_images
from leankd.data.layout import IMAGE_EXTENSIONS
from leankd.data.split import stratified_split
from leankd.data.stats import channel_stats
from leankd.data.stream import ImageFolderStream

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageAugment",
    "ImageFolderStream",
    "ImageSource",
    "ImageSplit",
    "channel_stats",
    "load_images",
    "normalize",
    "random_crop",
    "random_hflip",
    "stratified_split",
]
