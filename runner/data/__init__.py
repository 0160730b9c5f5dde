"""Data: where image sets come from (sources, download) and how they become batches."""
from .batches import TensorBatches, augment_params, crop_flip, to_float
from .download import DownloadError, cifar10_present, fetch_cifar10
from .sources import (
                      DataError,
                      Splits,
                      default_data_root,
                      fetch_data,
                      load_cifar10,
                      load_imagefolder,
                      load_splits,
                      load_test_split,
                      make_synthetic,
                      resolve_root,
                      split_train_val,
                      verify_imagefolder,
)

__all__ = ["DataError", "DownloadError", "Splits", "TensorBatches", "augment_params", "cifar10_present", "crop_flip",
           "default_data_root", "fetch_cifar10", "fetch_data", "load_cifar10", "load_imagefolder", "load_splits", "load_test_split", "make_synthetic",
           "resolve_root", "split_train_val", "to_float", "verify_imagefolder"]
