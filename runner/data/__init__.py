"""Data: the dataset registry (catalog; a file per data set), fetching, splits, and how images become batches."""
from . import cifar10, cifar100, imagefolder, svhn, synthetic  # each registers its data set
from .batches import TensorBatches, augment_params, crop_flip, to_float
from .catalog import DATASETS, DataError, Dataset, dataset_of, default_data_root, resolve_root
from .cifar10 import load_cifar10
from .download import cifar10_present, fetch_cifar10
from .fetch import DownloadError
from .imagefolder import load_imagefolder, verify_imagefolder
from .sources import Splits, fetch_data, load_splits, load_test_split, split_train_val
from .synthetic import make_synthetic

__all__ = [
           "DATASETS",
           "DataError",
           "Dataset",
           "DownloadError",
           "Splits",
           "TensorBatches",
           "augment_params",
           "cifar10",
           "cifar10_present",
           "cifar100",
           "crop_flip",
           "dataset_of",
           "default_data_root",
           "fetch_cifar10",
           "fetch_data",
           "imagefolder",
           "load_cifar10",
           "load_imagefolder",
           "load_splits",
           "load_test_split",
           "make_synthetic",
           "resolve_root",
           "split_train_val",
           "svhn",
           "synthetic",
           "to_float",
           "verify_imagefolder",
]
