"""Labelled image data for *evaluation* and for training teachers — never for recovery — read
from an ImageFolder tree or its ``.tar.gz`` (nothing here downloads); and the synthetic and
transfer sets."""

from __future__ import annotations

from recoverprune.core.spec import DEFAULT_MEAN, DEFAULT_STD
from recoverprune.data.folders import (
    DataError,
    ImageTensorDataset,
    default_cache_dir,
    extract,
    load_split,
)

__all__ = [
    "DEFAULT_MEAN",
    "DEFAULT_STD",
    "DataError",
    "ImageTensorDataset",
    "default_cache_dir",
    "extract",
    "load_split",
]
