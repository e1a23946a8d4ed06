#!/usr/bin/env python
"""Build an image dataset as a folder-per-category tree with a manifest.csv.

Two datasets:

fashion-mnist
    A balanced, seeded sample of Fashion-MNIST (28 x 28 gray clothing pictures, ten
    classes) from Debian's dataset-fashion-mnist package.
emoji
    Emoji of Apple, Google, Facebook and Twitter, one folder per object-like Unicode
    subcategory (household, tool, food-fruit ...), from npm's emoji-datasource-*
    packages.

Re-running a build with the same output folder replaces the files of the earlier
build (listed in its manifest.csv) and leaves any other file alone, so nothing is ever
duplicated.

Examples
--------
    python scripts/build_dataset.py fashion-mnist --out data/fmnist --n-images 3000
    python scripts/build_dataset.py emoji --out data/emoji
    python scripts/build_dataset.py emoji --out data/emoji \\
        --node-modules ~/emoji/node_modules --subcategories household,tool,sport
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bulkshift.datasets import DatasetError  # noqa: E402
from bulkshift.datasets.emoji import (  # noqa: E402
    DEFAULT_NPM_CACHE,
    DEFAULT_SUBCATEGORIES,
    VENDORS,
    build_emoji,
)
from bulkshift.datasets.fashion_mnist import (  # noqa: E402
    DEFAULT_SOURCE_DIR,
    build_fashion_mnist,
)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run '%(prog)s fashion-mnist --help' or '%(prog)s emoji --help' for the "
        "options of each dataset.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="log warnings only")
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    fashion = datasets.add_parser(
        "fashion-mnist",
        parents=[common],
        help="balanced Fashion-MNIST sample",
        description="Write a balanced, seeded Fashion-MNIST sample as "
        "OUT/<class>/<split>-<index>.png plus OUT/manifest.csv.",
    )
    fashion.add_argument("--out", required=True, type=Path, help="output folder")
    fashion.add_argument(
        "--n-images",
        type=int,
        default=3000,
        help="total images, balanced over the 10 classes (default: %(default)s)",
    )
    fashion.add_argument(
        "--seed", type=int, default=0, help="seed of the sample (default: %(default)s)"
    )
    fashion.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="Fashion-MNIST split to sample from (default: %(default)s)",
    )
    fashion.add_argument(
        "--source-dir",
        type=Path,
        default=DEFAULT_SOURCE_DIR,
        help="folder of the IDX files (default: %(default)s, from apt-get install "
        "dataset-fashion-mnist)",
    )

    emoji = datasets.add_parser(
        "emoji",
        parents=[common],
        help="emoji of four vendors by subcategory",
        description="Write emoji PNGs (64 px) as OUT/<subcategory>/<vendor>-<code>.png "
        "plus OUT/manifest.csv; only emoji a vendor has an image for.",
    )
    emoji.add_argument("--out", required=True, type=Path, help="output folder")
    emoji.add_argument(
        "--node-modules",
        type=Path,
        help="folder holding emoji-datasource-{apple,google,facebook,twitter}; when "
        f"omitted they are installed with npm into {DEFAULT_NPM_CACHE} (see "
        "--npm-cache)",
    )
    emoji.add_argument(
        "--npm-cache",
        type=Path,
        default=DEFAULT_NPM_CACHE,
        help="where to npm install the packages when --node-modules is not given",
    )
    emoji.add_argument(
        "--subcategories",
        type=_comma_list,
        default=DEFAULT_SUBCATEGORIES,
        help="comma-separated Unicode subcategories, one folder each (default: "
        f"{','.join(DEFAULT_SUBCATEGORIES)})",
    )
    emoji.add_argument(
        "--vendors",
        type=_comma_list,
        default=VENDORS,
        help=f"comma-separated vendors (default: {','.join(VENDORS)})",
    )
    return parser.parse_args(argv)


def _comma_list(text: str) -> tuple[str, ...]:
    values = tuple(value.strip() for value in text.split(",") if value.strip())
    if not values:
        raise argparse.ArgumentTypeError("give at least one name")
    return values


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.WARNING if arguments.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if arguments.dataset == "fashion-mnist":
            report = build_fashion_mnist(
                arguments.out,
                n_images=arguments.n_images,
                seed=arguments.seed,
                split=arguments.split,
                source_dir=arguments.source_dir,
            )
        else:
            report = build_emoji(
                arguments.out,
                node_modules=arguments.node_modules,
                subcategories=arguments.subcategories,
                vendors=arguments.vendors,
                npm_cache=arguments.npm_cache,
            )
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(report.summary())
    for label, count in sorted(report.counts.items()):
        print(f"  {label:<20} {count:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
