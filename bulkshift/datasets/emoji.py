"""Emoji of four vendors as a folder-per-category tree of object pictures.

The images come from the npm packages ``emoji-datasource-<vendor>`` (apple, google,
facebook, twitter), which ship one 64 x 64 PNG per emoji and, in ``emoji.json``, each
emoji's Unicode category and subcategory. A category of the tree is one
subcategory (``household``, ``tool``, ``food-fruit`` ...), with the four vendors'
drawings pooled: the same object drawn in different styles is what makes the set a
useful small stand-in for product photos.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from bulkshift.datasets.folder import BuildReport, DatasetError, TreeEntry, write_tree

logger = logging.getLogger(__name__)

VENDORS = ("apple", "google", "facebook", "twitter")
# The version the defaults were chosen with; emoji.json changes between releases.
PACKAGE_VERSION = "16.0.0"

# Subcategories whose emoji are things (not faces, people, flags or symbols), with
# 12 to 50 emoji each: about 330 images per vendor, 1,300 in all.
DEFAULT_SUBCATEGORIES = (
    "book-paper",
    "clothing",
    "computer",
    "drink",
    "food-fruit",
    "food-sweet",
    "food-vegetable",
    "household",
    "musical-instrument",
    "office",
    "sport",
    "tool",
    "transport-air",
    "transport-ground",
)

DEFAULT_NPM_CACHE = Path.home() / ".cache" / "bulkshift" / "emoji-datasource"


def package_name(vendor: str) -> str:
    return f"emoji-datasource-{vendor}"


def folder_name(subcategory: str) -> str:
    """A subcategory as a folder name: ``light & video`` -> ``light-and-video``."""
    name = subcategory.replace("&", "and")
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")


def install_emoji_packages(
    cache_dir: str | os.PathLike = DEFAULT_NPM_CACHE,
    vendors: tuple[str, ...] = VENDORS,
    version: str = PACKAGE_VERSION,
) -> Path:
    """Run ``npm install`` of the vendor packages into ``cache_dir`` unless present.

    Returns
    -------
    Path
        The ``node_modules`` folder to give :func:`build_emoji`.

    Raises
    ------
    DatasetError
        npm is not installed or the install failed.
    """
    cache_dir = Path(cache_dir)
    node_modules = cache_dir / "node_modules"
    missing = [v for v in vendors if not (node_modules / package_name(v)).is_dir()]
    if not missing:
        return node_modules

    npm = shutil.which("npm")
    if npm is None:
        raise DatasetError(
            "npm is not installed; install Node.js and npm (apt-get install npm), or "
            "install the packages elsewhere and pass their node_modules folder"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    packages = [f"{package_name(v)}@{version}" for v in missing]
    logger.info("Installing %s into %s", ", ".join(packages), cache_dir)
    completed = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(cache_dir),
            "--no-audit",
            "--no-fund",
            *packages,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise DatasetError(
            f"npm install of {', '.join(packages)} into {cache_dir} failed (exit "
            f"{completed.returncode}): {completed.stderr.strip()[-500:]}"
        )
    return node_modules


def _image_folder(package_dir: Path, vendor: str) -> Path:
    # emoji-datasource 15+ uses img/<vendor>/64; older releases img-<vendor>/64.
    for folder in (
        package_dir / "img" / vendor / "64",
        package_dir / f"img-{vendor}" / "64",
    ):
        if folder.is_dir():
            return folder
    raise DatasetError(
        f"{package_dir} has no 64 px image folder (img/{vendor}/64); reinstall "
        f"{package_name(vendor)}"
    )


def _read_package(node_modules: Path, vendor: str) -> tuple[list[dict], Path, str]:
    package_dir = node_modules / package_name(vendor)
    try:
        emoji = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
        version = json.loads((package_dir / "package.json").read_text())["version"]
    except FileNotFoundError:
        raise DatasetError(
            f"{package_name(vendor)} is not installed in {node_modules}; run npm "
            f"install {' '.join(package_name(v) for v in VENDORS)} there, or omit "
            "--node-modules to let the builder install them"
        )
    return emoji, _image_folder(package_dir, vendor), version


def build_emoji(
    out_dir: str | os.PathLike,
    node_modules: str | os.PathLike | None = None,
    subcategories: tuple[str, ...] | list[str] | None = None,
    vendors: tuple[str, ...] = VENDORS,
    npm_cache: str | os.PathLike = DEFAULT_NPM_CACHE,
) -> BuildReport:
    """Write ``out_dir/<subcategory>/<vendor>-<code points>.png`` and a manifest.

    Parameters
    ----------
    out_dir : path
        Created if needed; re-running replaces a previous build's files only.
    node_modules : path, optional
        Folder holding the ``emoji-datasource-<vendor>`` packages. When None, they are
        installed with npm into ``npm_cache`` (once).
    subcategories : list of str, optional
        Unicode subcategories to keep (default :data:`DEFAULT_SUBCATEGORIES`).
    vendors : tuple of str, default=("apple", "google", "facebook", "twitter")
    npm_cache : path, default=~/.cache/bulkshift/emoji-datasource

    Returns
    -------
    BuildReport
    """
    if node_modules is None:
        node_modules = install_emoji_packages(npm_cache, vendors)
    node_modules = Path(node_modules)
    wanted = tuple(subcategories or DEFAULT_SUBCATEGORIES)

    entries = []
    known_subcategories: set[str] = set()
    for vendor in vendors:
        emoji, image_folder, version = _read_package(node_modules, vendor)
        for record in emoji:
            known_subcategories.add(record["subcategory"])
            if record["subcategory"] not in wanted:
                continue
            if not record.get(f"has_img_{vendor}"):
                continue
            image = image_folder / record["image"]
            if not image.is_file():
                logger.warning(
                    "%s says it has %s but the file is missing", vendor, image
                )
                continue
            label = folder_name(record["subcategory"])
            entries.append(
                TreeEntry(
                    path=f"{label}/{vendor}-{record['image']}",
                    label=label,
                    source=f"{package_name(vendor)}@{version}:{record['image']}",
                    content=image.read_bytes,
                )
            )

    unknown = sorted(set(wanted) - known_subcategories)
    if unknown:
        raise DatasetError(
            f"unknown emoji subcategories {', '.join(unknown)}; choose among "
            f"{', '.join(sorted(known_subcategories))}"
        )
    return write_tree(out_dir, entries)
