"""Folder-per-category image trees: read them, and write them idempotently.

A tree looks like ``root/<category>/<image>``; images in deeper subfolders belong to
their top-level category. The builders in this package also write ``manifest.csv``
(columns ``path,label,source``, paths relative to ``root`` with ``/``).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "source")
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)


class DatasetError(RuntimeError):
    """A dataset folder or source cannot be used; the message says how to fix it."""


@dataclass
class FolderDataset:
    """The images of a folder-per-category tree.

    Attributes
    ----------
    root : Path
    paths : list of Path
        Every image, sorted by category then path.
    labels : ndarray of int of shape (n_images,)
        Index into ``label_names`` of each image's category.
    label_names : list of str
        Categories (top-level folders holding at least one image), sorted.
    skipped : list of Path
        Files that are not images, or not inside a category folder.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray
    label_names: list[str]
    skipped: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def load_folder(root: str | os.PathLike) -> FolderDataset:
    """Read a folder-per-category tree.

    Hidden files and folders (name starting with ``.``) are ignored. Files that are
    not images (by suffix: png, jpg, jpeg, gif, bmp, webp, tif, tiff) and files directly
    under ``root`` are listed in ``skipped`` and logged; ``manifest.csv`` at the root
    is expected and not reported.

    Raises
    ------
    DatasetError
        ``root`` is not a folder, or holds no image in any category folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"{root} is not a folder; give the folder that holds one subfolder per "
            "category"
        )

    by_category: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    for current, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        current_path = Path(current)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = current_path / name
            relative = path.relative_to(root)
            if len(relative.parts) == 1:
                if name != MANIFEST_NAME:
                    skipped.append(path)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(path)
                continue
            by_category.setdefault(relative.parts[0], []).append(path)

    if skipped:
        logger.warning(
            "%d files in %s are not images in a category folder and were skipped, "
            "for example %s",
            len(skipped),
            root,
            skipped[0],
        )
    if not by_category:
        raise DatasetError(
            f"{root} holds no images in category folders; put each image in a "
            "subfolder named after its category (e.g. root/chair/photo1.jpg)"
        )

    label_names = sorted(by_category)
    paths, labels = [], []
    for index, name in enumerate(label_names):
        category_paths = sorted(by_category[name])
        paths.extend(category_paths)
        labels.extend([index] * len(category_paths))
    logger.info(
        "Loaded %d images in %d categories from %s", len(paths), len(label_names), root
    )
    return FolderDataset(
        root, paths, np.asarray(labels, dtype=int), label_names, skipped
    )


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class TreeEntry:
    """One image to write: where, its category, its origin, and how to get its bytes."""

    path: str  # relative to the tree's root, "/"-separated
    label: str
    source: str
    content: Callable[[], bytes]


@dataclass
class BuildReport:
    """What a builder did to its output folder."""

    root: Path
    n_images: int
    counts: dict[str, int]
    written: int
    unchanged: int
    removed: int

    def summary(self) -> str:
        return (
            f"{self.n_images} images in {len(self.counts)} categories in {self.root} "
            f"({self.written} written, {self.unchanged} unchanged, {self.removed} "
            "removed)"
        )


def read_manifest(root: Path) -> list[dict[str, str]]:
    """Rows of ``root/manifest.csv`` (empty when there is none)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def write_tree(root: str | os.PathLike, entries: Iterable[TreeEntry]) -> BuildReport:
    """Make ``root`` hold exactly ``entries`` plus ``manifest.csv``; safe to re-run.

    Files a previous build listed in the manifest but not wanted now are deleted;
    files nobody listed (a person's own) are never touched. A file already there with
    the same bytes is not rewritten.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries = sorted(entries, key=lambda entry: (entry.label, entry.path))
    wanted = {entry.path for entry in entries}
    if len(wanted) != len(entries):
        raise ValueError("two entries share a path; every image needs its own file")

    removed = 0
    for row in read_manifest(root):
        if row["path"] not in wanted:
            old = _inside(root, row["path"])
            if old.is_file():
                old.unlink()
                removed += 1
                _remove_empty_parents(old.parent, root)

    written = unchanged = 0
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.label] = counts.get(entry.label, 0) + 1
        target = _inside(root, entry.path)
        content = entry.content()
        if target.is_file() and target.read_bytes() == content:
            unchanged += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, content)
        written += 1

    rows = [(entry.path, entry.label, entry.source) for entry in entries]
    _atomic_write(root / MANIFEST_NAME, _manifest_bytes(rows))
    report = BuildReport(root, len(entries), counts, written, unchanged, removed)
    logger.info("Dataset: %s", report.summary())
    return report


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"manifest path {relative!r} points outside {root}")
    return path


def _remove_empty_parents(folder: Path, root: Path) -> None:
    root = root.resolve()
    while folder != root and folder.is_relative_to(root) and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def _manifest_bytes(rows: list[tuple[str, str, str]]) -> bytes:
    lines = [",".join(MANIFEST_COLUMNS)]
    for row in rows:
        lines.append(",".join(_csv_field(value) for value in row))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _csv_field(value: str) -> str:
    if any(character in value for character in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _atomic_write(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        # mkstemp makes the file private; images must be readable like any other.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
