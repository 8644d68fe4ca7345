"""Labelled image data for *evaluation* and for training teachers — never for recovery.

Reads an ImageFolder directory (``<root>/<split>/<class>/<image>``, listed by
``torchvision.datasets.ImageFolder``) or a ``.tar.gz`` of one (extracted once into a cache
directory and verified), decodes every image once into a ``uint8`` tensor that is cached
beside it, and serves normalised batches fast. Nothing here downloads.

Besides these folders, ``data/`` holds the synthetic sets and the transfer sets;
evaluation is the layer above (``recoverprune.evaluation``).
"""

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
