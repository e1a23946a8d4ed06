"""Fashion-MNIST as PNG files: a folder per category, or one flat folder.

The images come from Debian's ``dataset-fashion-mnist`` package (IDX files, gzipped,
under ``/usr/share/datasets/fashion-mnist``): 60,000 training and 10,000 test images of
28 x 28 gray pixels in ten balanced classes.

Two layouts: ``by-category`` (``Trouser/train-17042.png``) is what the benchmark and
:func:`~bulkshift.datasets.load_folder` read; ``flat`` (``fmnist-000123.png``) is the
demo's, where the person sorting the images must not see the answer in a file path.
Both keep the true category in ``manifest.csv``.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from bulkshift.datasets.folder import (
    BuildReport,
    DatasetError,
    TreeEntry,
    read_manifest,
    write_tree,
)

logger = logging.getLogger(__name__)

DEFAULT_SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")

# Zalando's class names, made safe as folder names ("T-shirt/top" has a slash).
CLASS_NAMES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)

LAYOUTS = ("by-category", "flat")
FLAT_PREFIX = "fmnist"

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) as an array of its declared shape.

    The IDX format: two zero bytes, a type code, the number of dimensions, one
    big-endian uint32 per dimension, then the values in C order.
    """
    path = Path(path)
    with open(path, "rb") as stream:
        data = stream.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)

    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path} is not an IDX file (header {data[:4].hex()})")
    n_dims = data[3]
    header_size = 4 + 4 * n_dims
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", n_dims, offset=4))
    values = np.frombuffer(data, _IDX_TYPES[data[2]], offset=header_size)
    if values.size != int(np.prod(shape)):
        raise DatasetError(
            f"{path} declares shape {shape} but holds {values.size} values; the file "
            "is truncated, reinstall it (apt-get install --reinstall "
            "dataset-fashion-mnist)"
        )
    return values.reshape(shape)


def _find_idx(source_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (source_dir / name).is_file():
            return source_dir / name
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] is not in {source_dir}; install Debian's "
        "package (apt-get install dataset-fashion-mnist) or pass the folder that holds "
        "the IDX files as source_dir"
    )


def load_fashion_mnist(
    split: str = "train", source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and labels (n,) of one split ("train" or "test")."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source_dir = Path(source_dir)
    prefix = _SPLIT_PREFIX[split]
    images = read_idx(_find_idx(source_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(source_dir, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DatasetError(
            f"Fashion-MNIST {split} in {source_dir}: {len(images)} images but "
            f"{len(labels)} labels"
        )
    return images, labels.astype(int)


def balanced_sample(
    labels: np.ndarray, n_images: int, n_classes: int, seed: int
) -> np.ndarray:
    """Indices of ``n_images`` images, as equal per class as possible, sorted.

    Each class gets ``n_images // n_classes``; the remainder goes one each to the
    first classes in label order.
    """
    rng = np.random.default_rng(seed)
    per_class = [
        n_images // n_classes + (k < n_images % n_classes) for k in range(n_classes)
    ]
    chosen = []
    for label, count in enumerate(per_class):
        available = np.flatnonzero(labels == label)
        if count > len(available):
            raise DatasetError(
                f"class {label} has {len(available)} images, fewer than the "
                f"{count} asked for; ask for at most {len(available) * n_classes} "
                "images"
            )
        chosen.append(rng.choice(available, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def build_fashion_mnist(
    out_dir: str | os.PathLike,
    n_images: int = 3000,
    seed: int = 0,
    split: str = "train",
    source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR,
    layout: str = "by-category",
) -> BuildReport:
    """Write a balanced sample of Fashion-MNIST as PNG files under ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Created if needed. Re-running replaces a previous build's files (listed in its
        ``manifest.csv``) and leaves other files alone.
    n_images : int, default=3000
        Total images, balanced over the ten classes.
    seed : int, default=0
        Seed of the sample.
    split : {"train", "test"}, default="train"
    source_dir : path, default=/usr/share/datasets/fashion-mnist
    layout : {"by-category", "flat"}, default="by-category"
        ``by-category``: ``out_dir/<class>/<split>-<i>.png``, ``i`` the image's index
        in the split. ``flat``: ``out_dir/fmnist-<n>.png``, ``n`` its position in the
        sample (in the order of the split): no file path tells the class.

    Returns
    -------
    BuildReport
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    images, labels = load_fashion_mnist(split, source_dir)
    chosen = balanced_sample(labels, n_images, len(CLASS_NAMES), seed)
    logger.info(
        "Fashion-MNIST %s: %d of %d images, seed %d",
        split,
        len(chosen),
        len(images),
        seed,
    )

    entries = [
        TreeEntry(
            path=_image_path(layout, split, index, position, labels[index]),
            label=CLASS_NAMES[labels[index]],
            source=f"fashion-mnist:{split}:{index}",
            content=lambda pixels=images[index]: _png(pixels),
        )
        for position, index in enumerate(chosen)
    ]
    return write_tree(out_dir, entries)


def built_layout(out_dir: str | os.PathLike) -> str | None:
    """The layout of the sample already in ``out_dir``, or None if there is none.

    Read from its ``manifest.csv``: a path with a folder in it is ``by-category``.
    """
    rows = read_manifest(Path(out_dir))
    if not rows:
        return None
    return "by-category" if any("/" in row["path"] for row in rows) else "flat"


def _image_path(layout: str, split: str, index: int, position: int, label: int) -> str:
    if layout == "flat":
        return f"{FLAT_PREFIX}-{position:06d}.png"
    return f"{CLASS_NAMES[label]}/{split}-{index:05d}.png"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # optimize=False keeps the bytes of a given image identical on every run.
    Image.fromarray(pixels).save(buffer, "PNG", optimize=False)
    return buffer.getvalue()
