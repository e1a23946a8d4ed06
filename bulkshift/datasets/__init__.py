"""Image datasets as folder-per-category trees: a loader and two builders.

- :func:`load_folder` reads any ``root/<category>/<image>`` tree;
- :func:`build_fashion_mnist` writes a balanced Fashion-MNIST sample (Debian's
  ``dataset-fashion-mnist`` package);
- :func:`build_emoji` writes emoji of four vendors grouped by subcategory (npm's
  ``emoji-datasource-*`` packages).

Both builders write ``manifest.csv`` (``path,label,source``) and can be re-run: a
rebuild replaces its own earlier files and never duplicates them.
"""

from bulkshift.datasets.emoji import DEFAULT_SUBCATEGORIES, build_emoji
from bulkshift.datasets.fashion_mnist import CLASS_NAMES, build_fashion_mnist, read_idx
from bulkshift.datasets.folder import (
    MANIFEST_NAME,
    BuildReport,
    DatasetError,
    FolderDataset,
    load_folder,
    read_manifest,
)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SUBCATEGORIES",
    "MANIFEST_NAME",
    "BuildReport",
    "DatasetError",
    "FolderDataset",
    "build_emoji",
    "build_fashion_mnist",
    "load_folder",
    "read_idx",
    "read_manifest",
]
