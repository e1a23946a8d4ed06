"""The folder-per-category loader and the Fashion-MNIST and emoji builders."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bulkshift.datasets import (
    CLASS_NAMES,
    DatasetError,
    build_emoji,
    build_fashion_mnist,
    load_folder,
    read_idx,
    read_manifest,
)
from bulkshift.datasets import emoji as emoji_module
from bulkshift.datasets.fashion_mnist import (
    DEFAULT_SOURCE_DIR,
    balanced_sample,
    built_layout,
)


def _load_script(name: str):
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_dataset = _load_script("build_dataset")

# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, written by hand from the format's definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fashion_mnist(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 40-image Fashion-MNIST in Debian's layout: 4 images per class, 5 x 5 pixels."""
    labels = np.tile(np.arange(10), 4)
    images = np.stack(
        [np.full((5, 5), 6 * index, dtype=np.uint8) for index in range(40)]
    )
    folder = tmp_path / "fashion-source"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(images))
    )
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))  # not gzipped
    return folder, images, labels


def tree_files(root: Path) -> list[str]:
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.name != "manifest.csv"
    )


# --------------------------------------------------------------------------- IDX


def test_read_idx_plain_and_gzipped(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    (tmp_path / "zipped").write_bytes(gzip.compress(idx_bytes(array)))

    np.testing.assert_array_equal(read_idx(tmp_path / "plain"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "zipped"), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 4)))[:-3])
    (tmp_path / "text").write_bytes(b"hello world")

    with pytest.raises(DatasetError, match=r"declares shape \(4, 4\) but holds 13"):
        read_idx(tmp_path / "short")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "text")


# ------------------------------------------------------------------------ Fashion-MNIST


def test_balanced_sample_gives_the_remainder_to_the_first_classes():
    labels = np.repeat(np.arange(3), 5)

    chosen = balanced_sample(labels, n_images=8, n_classes=3, seed=0)

    assert np.bincount(labels[chosen]).tolist() == [3, 3, 2]
    assert len(set(chosen.tolist())) == 8
    np.testing.assert_array_equal(chosen, balanced_sample(labels, 8, 3, seed=0))


def test_balanced_sample_refuses_more_than_a_class_has():
    with pytest.raises(DatasetError, match="ask for at most 6 images"):
        balanced_sample(np.repeat(np.arange(3), 2), n_images=9, n_classes=3, seed=0)


def test_fashion_mnist_tree_and_manifest(tmp_path, fake_fashion_mnist):
    source, images, labels = fake_fashion_mnist
    out = tmp_path / "fmnist"

    report = build_fashion_mnist(out, n_images=12, seed=5, source_dir=source)

    rows = read_manifest(out)
    assert report.n_images == len(rows) == 12
    assert report.counts["T-shirt_top"] == 2 and report.counts["Trouser"] == 2
    assert report.counts["Bag"] == 1
    for row in rows:
        index = int(row["source"].rsplit(":", 1)[1])
        assert row["source"] == f"fashion-mnist:train:{index}"
        assert row["label"] == CLASS_NAMES[labels[index]]
        assert row["path"] == f"{row['label']}/train-{index:05d}.png"
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / row["path"])), images[index]
        )
    assert tree_files(out) == sorted(row["path"] for row in rows)


def test_fashion_mnist_rebuild_never_duplicates(tmp_path, fake_fashion_mnist):
    source = fake_fashion_mnist[0]
    out = tmp_path / "fmnist"
    build_fashion_mnist(out, n_images=20, seed=0, source_dir=source)
    own_file = out / "Bag" / "my-photo.jpg"
    own_file.write_bytes(b"a person's own file")

    again = build_fashion_mnist(out, n_images=20, seed=0, source_dir=source)
    assert (again.written, again.unchanged, again.removed) == (0, 20, 0)

    smaller = build_fashion_mnist(out, n_images=10, seed=1, source_dir=source)
    # Files of both samples stay; the others of the old one go, the new are written.
    assert smaller.removed == 20 - smaller.unchanged
    assert smaller.written == 10 - smaller.unchanged
    listed = sorted(row["path"] for row in read_manifest(out))
    assert len(listed) == 10
    assert tree_files(out) == sorted(listed + ["Bag/my-photo.jpg"])
    assert own_file.read_bytes() == b"a person's own file"


def test_flat_fashion_mnist_hides_the_class_from_every_path(
    tmp_path, fake_fashion_mnist
):
    source, images, labels = fake_fashion_mnist
    out = tmp_path / "demo"

    report = build_fashion_mnist(
        out, n_images=12, seed=5, source_dir=source, layout="flat"
    )

    rows = read_manifest(out)
    chosen = sorted(int(row["source"].rsplit(":", 1)[1]) for row in rows)
    assert report.n_images == 12 and tree_files(out) == [
        f"fmnist-{position:06d}.png" for position in range(12)
    ]
    for row in rows:
        index = int(row["source"].rsplit(":", 1)[1])
        # Numbered by position in the sample, in the split's order.
        assert row["path"] == f"fmnist-{chosen.index(index):06d}.png"
        assert row["label"] == CLASS_NAMES[labels[index]]  # the truth, here only
        np.testing.assert_array_equal(
            np.asarray(Image.open(out / row["path"])), images[index]
        )
    again = build_fashion_mnist(
        out, n_images=12, seed=5, source_dir=source, layout="flat"
    )
    assert (again.written, again.unchanged, again.removed) == (0, 12, 0)


def test_built_layout_is_read_from_the_manifest(tmp_path, fake_fashion_mnist):
    source = fake_fashion_mnist[0]
    build_fashion_mnist(tmp_path / "tree", n_images=10, source_dir=source)
    build_fashion_mnist(
        tmp_path / "flat", n_images=10, source_dir=source, layout="flat"
    )

    assert built_layout(tmp_path / "tree") == "by-category"
    assert built_layout(tmp_path / "flat") == "flat"
    assert built_layout(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match="by-category, flat.*'shuffled'"):
        build_fashion_mnist(
            tmp_path / "x", n_images=10, source_dir=source, layout="shuffled"
        )


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_fashion_mnist(tmp_path / "out", n_images=10, source_dir=tmp_path)


@pytest.mark.skipif(
    not (DEFAULT_SOURCE_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_test_split(tmp_path):
    report = build_fashion_mnist(tmp_path / "real", n_images=20, seed=0, split="test")

    assert report.counts == {name: 2 for name in CLASS_NAMES}
    dataset = load_folder(tmp_path / "real")
    assert dataset.label_names == sorted(CLASS_NAMES)
    assert Image.open(dataset.paths[0]).size == (28, 28)


# --------------------------------------------------------------------------- loader


def test_load_folder_reads_categories_and_reports_other_files(tmp_path):
    root = tmp_path / "photos"
    for relative in [
        "chair/b.png",
        "chair/a.JPG",
        "chair/old/c.png",  # deeper folder: still a chair
        "suitcase/x.webp",
        "chair/.thumbnail.png",  # hidden file
        ".trash/suitcase.png",  # hidden folder
        "chair/notes.txt",  # not an image
        "loose.png",  # not in a category
        "manifest.csv",
    ]:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (root / "empty-category").mkdir()

    dataset = load_folder(root)

    assert dataset.label_names == ["chair", "suitcase"]
    assert [p.relative_to(root).as_posix() for p in dataset.paths] == [
        "chair/a.JPG",
        "chair/b.png",
        "chair/old/c.png",
        "suitcase/x.webp",
    ]
    assert dataset.labels.tolist() == [0, 0, 0, 1]
    assert sorted(p.name for p in dataset.skipped) == ["loose.png", "notes.txt"]
    assert len(dataset) == 4


def test_load_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty" / "chair").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images in category folders"):
        load_folder(tmp_path / "empty")


# --------------------------------------------------------------------------- emoji


def _emoji_record(image, subcategory, **has_img):
    record = {"image": image, "subcategory": subcategory, "category": "Objects"}
    record.update({f"has_img_{vendor}": value for vendor, value in has_img.items()})
    return record


@pytest.fixture
def fake_node_modules(tmp_path) -> Path:
    """Two vendors: apple in today's img/apple/64 layout, google in img-google/64."""
    records = [
        _emoji_record("1f528.png", "tool", apple=True, google=True),  # hammer
        _emoji_record("1fa9a.png", "tool", apple=True, google=False),  # saw
        _emoji_record("1f4a1.png", "light & video", apple=True, google=True),
        _emoji_record("1f600.png", "face-smiling", apple=True, google=True),
    ]
    node_modules = tmp_path / "node_modules"
    for vendor, image_folder in (
        ("apple", "img/apple/64"),
        ("google", "img-google/64"),
    ):
        package = node_modules / f"emoji-datasource-{vendor}"
        (package / image_folder).mkdir(parents=True)
        (package / "emoji.json").write_text(json.dumps(records))
        (package / "package.json").write_text(json.dumps({"version": "16.0.0"}))
        for record in records:
            color = (255, 0, 0, 255) if vendor == "apple" else (0, 0, 255, 128)
            Image.new("RGBA", (64, 64), color).save(
                package / image_folder / record["image"]
            )
    return node_modules


def test_emoji_tree_pools_vendors_by_subcategory(tmp_path, fake_node_modules):
    out = tmp_path / "emoji"

    report = build_emoji(
        out,
        node_modules=fake_node_modules,
        subcategories=["tool", "light & video"],
        vendors=("apple", "google"),
    )

    assert tree_files(out) == [
        "light-and-video/apple-1f4a1.png",
        "light-and-video/google-1f4a1.png",
        "tool/apple-1f528.png",
        "tool/apple-1fa9a.png",
        "tool/google-1f528.png",
    ]
    assert report.counts == {"light-and-video": 2, "tool": 3}
    rows = {row["path"]: row for row in read_manifest(out)}
    assert rows["tool/google-1f528.png"]["source"] == (
        "emoji-datasource-google@16.0.0:1f528.png"
    )
    copied = (out / "tool/google-1f528.png").read_bytes()
    assert (
        copied
        == (
            fake_node_modules / "emoji-datasource-google/img-google/64/1f528.png"
        ).read_bytes()
    )

    again = build_emoji(
        out, node_modules=fake_node_modules, subcategories=["tool"], vendors=("apple",)
    )
    assert (again.written, again.unchanged, again.removed) == (0, 2, 3)
    assert tree_files(out) == ["tool/apple-1f528.png", "tool/apple-1fa9a.png"]


def test_emoji_unknown_subcategory_lists_the_known_ones(tmp_path, fake_node_modules):
    with pytest.raises(
        DatasetError, match="unknown emoji subcategories kitchen; .*tool"
    ):
        build_emoji(
            tmp_path / "out",
            node_modules=fake_node_modules,
            subcategories=["tool", "kitchen"],
            vendors=("apple",),
        )


def test_emoji_missing_package_says_how_to_install(tmp_path, fake_node_modules):
    with pytest.raises(DatasetError, match="emoji-datasource-twitter is not installed"):
        build_emoji(
            tmp_path / "out", node_modules=fake_node_modules, vendors=("twitter",)
        )


def test_emoji_packages_are_installed_with_npm_once(tmp_path, monkeypatch):
    # A stand-in npm records its arguments and creates the package folders.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "npm-calls.txt"
    fake_npm = bin_dir / "npm"
    fake_npm.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'prefix=$3\nshift 5\nfor package in "$@"; do\n'
        '  mkdir -p "$prefix/node_modules/${package%@*}"\ndone\n'
    )
    fake_npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "npm-cache"

    first = emoji_module.install_emoji_packages(cache, vendors=("apple", "google"))
    second = emoji_module.install_emoji_packages(cache, vendors=("apple", "google"))

    assert first == second == cache / "node_modules"
    calls = log.read_text().splitlines()
    assert calls == [
        f"install --prefix {cache} --no-audit --no-fund emoji-datasource-apple@16.0.0 "
        + "emoji-datasource-google@16.0.0"
    ]


def _real_node_modules() -> Path | None:
    for folder in (
        os.environ.get("BULKSHIFT_EMOJI_NODE_MODULES"),
        emoji_module.DEFAULT_NPM_CACHE / "node_modules",
    ):
        if (
            folder
            and (Path(folder) / "emoji-datasource-apple" / "emoji.json").is_file()
        ):
            return Path(folder)
    return None


@pytest.mark.skipif(
    _real_node_modules() is None,
    reason="emoji-datasource packages not installed (set BULKSHIFT_EMOJI_NODE_MODULES)",
)
def test_real_emoji_packages(tmp_path):
    report = build_emoji(
        tmp_path / "emoji",
        node_modules=_real_node_modules(),
        subcategories=["household", "musical-instrument"],
        vendors=("apple", "twitter"),
    )

    assert set(report.counts) == {"household", "musical-instrument"}
    assert report.counts["musical-instrument"] >= 20
    assert Image.open(load_folder(tmp_path / "emoji").paths[0]).size == (64, 64)


# --------------------------------------------------------------------------- the script


def test_script_builds_and_rebuilds(tmp_path, fake_fashion_mnist, capsys):
    out = tmp_path / "cli"
    arguments = ["fashion-mnist", "--out", str(out), "--n-images", "10", "--seed", "2",
                 "--source-dir", str(fake_fashion_mnist[0]), "--quiet"]  # fmt: skip

    assert build_dataset.main(arguments) == 0
    assert build_dataset.main(arguments) == 0

    printed = capsys.readouterr().out
    assert "10 images in 10 categories" in printed
    assert "(0 written, 10 unchanged, 0 removed)" in printed
    with open(out / "manifest.csv", newline="") as stream:
        assert len(list(csv.DictReader(stream))) == 10


def test_script_reports_errors_without_traceback(tmp_path, capsys):
    code = build_dataset.main(
        ["fashion-mnist", "--out", str(tmp_path / "x"), "--source-dir", str(tmp_path)]
    )

    assert code == 2
    assert "error: Fashion-MNIST file" in capsys.readouterr().err


def test_script_help(capsys):
    with pytest.raises(SystemExit) as exited:
        build_dataset.main(["emoji", "--help"])

    assert exited.value.code == 0
    assert "--subcategories" in capsys.readouterr().out
