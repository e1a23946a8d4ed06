#!/usr/bin/env python
"""The simulated-annotator benchmark: how many clicks does sorting a folder cost?

Runs the simulated person of the method note for every classifier x uncertainty
measure x bulk-shift strategy on the same features, and prints tables shaped like the
paper's Table I (AUC) and Table II (seconds), plus clicks, rounds, proposal purity and
two baselines: correcting every misplaced image by hand, and the oracle lower bound.

Features come from a folder of images (computed once, then cached by content hash) or
from precomputed arrays. With no input it builds a 3,000-image Fashion-MNIST sample
from Debian's dataset-fashion-mnist package.

Examples
--------
    python scripts/benchmark.py                                   # Fashion-MNIST sample
    python scripts/benchmark.py --images ~/photos --extractor vgg16 --vgg16-weights w.h5
    python scripts/benchmark.py --features-file X.npy --labels-file y.npy \\
        --classifiers lr --uncertainty entropy --strategy paper,guarded-pool
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bulkshift.core.classifiers import CLASSIFIERS  # noqa: E402
from bulkshift.core.measures import manual_baseline, oracle_baseline  # noqa: E402
from bulkshift.core.presort import name_by_majority, presort  # noqa: E402
from bulkshift.core.proposals import STRATEGIES  # noqa: E402
from bulkshift.core.simulation import SimulationResult, simulate  # noqa: E402
from bulkshift.core.uncertainty import MEASURES  # noqa: E402

logger = logging.getLogger("benchmark")

PAPER_MEASURES = "entropy,margin,least_confidence"
DEFAULT_SAMPLE = REPO_ROOT / "var" / "datasets" / "fashion-mnist-3000"


class BenchmarkInputError(SystemExit):
    """A command-line input the benchmark cannot use; exits with status 2."""

    def __init__(self, message: str):
        super().__init__(f"benchmark: error: {message}")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Strategies: "
        + "; ".join(
            f"{rule.name} = {rule.description}" for rule in STRATEGIES.values()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("input (one of)")
    source.add_argument(
        "--images",
        type=Path,
        help="folder with one sub-folder of images per true category",
    )
    source.add_argument(
        "--features-file", type=Path, help="precomputed features, .npy (n_images x d)"
    )
    source.add_argument(
        "--labels-file",
        type=Path,
        help="true category per row of --features-file, .npy of ints or strings",
    )
    features = parser.add_argument_group("features (with --images)")
    features.add_argument(
        "--extractor",
        choices=("vgg16", "pixels"),
        default="vgg16",
        help="vgg16 needs ImageNet weights (internet or --vgg16-weights); pixels "
        "needs nothing (default: vgg16, falling back to pixels with a warning)",
    )
    features.add_argument(
        "--vgg16-weights",
        type=Path,
        default=os.environ.get("BULKSHIFT_VGG16_WEIGHTS"),
        help="a Keras VGG16 weights file (env BULKSHIFT_VGG16_WEIGHTS)",
    )
    features.add_argument(
        "--pca",
        type=int,
        default=64,
        help="reduce pixels features to this many PCA components (0: keep all); "
        "vgg16 features are used as they are (default: %(default)s)",
    )
    features.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO_ROOT / "var" / "feature-cache",
        help="feature cache folder (default: %(default)s)",
    )
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--classifiers",
        default="lr,mlp,dt",
        help=f"comma-separated, from {','.join(CLASSIFIERS)} (default: %(default)s)",
    )
    grid.add_argument(
        "--uncertainty",
        default=PAPER_MEASURES,
        help=f"comma-separated, from {','.join(MEASURES)} (default: %(default)s)",
    )
    grid.add_argument(
        "--strategy",
        default="paper,guarded-pool",
        help=f"comma-separated, from {','.join(STRATEGIES)} (default: %(default)s)",
    )
    run = parser.add_argument_group("simulation")
    run.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        help="stop at this completeness; the paper's code 0.99, its text 0.999 "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=250,
        help="images shown per round (default: %(default)s)",
    )
    run.add_argument(
        "--n-clusters", type=int, help="k-means folders (default: one per category)"
    )
    run.add_argument(
        "--n-images",
        type=int,
        default=3000,
        help="size of the default Fashion-MNIST sample (default: %(default)s)",
    )
    run.add_argument("--seed", type=int, default=0, help="seeds everything (default 0)")
    run.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="simulations run side by side, one BLAS thread each (default: cores)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, help="write one record per run here")
    output.add_argument("--plot", type=Path, help="write the learning curves (PNG)")
    output.add_argument("--quiet", action="store_true", help="no per-round progress")
    return parser.parse_args(argv)


def _split_names(text: str, known: dict, what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise BenchmarkInputError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(known)}"
        )
    return names


def load_arrays(
    arguments: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, list, str]:
    """Features, true label indices, label names and the extractor id."""
    if arguments.features_file or arguments.labels_file:
        if not (arguments.features_file and arguments.labels_file):
            raise BenchmarkInputError(
                "--features-file and --labels-file go together; pass both"
            )
        return _load_precomputed(arguments.features_file, arguments.labels_file)

    images = arguments.images
    if images is None:
        images = _default_sample(arguments.n_images, arguments.seed)
    if not images.is_dir():
        raise BenchmarkInputError(
            f"--images {images} is not a folder; give a folder with one sub-folder of "
            "images per category"
        )
    return _extract_folder(images, arguments)


def _load_precomputed(features_file: Path, labels_file: Path):
    for path in (features_file, labels_file):
        if not path.is_file():
            raise BenchmarkInputError(f"{path} does not exist")
    features = np.load(features_file, allow_pickle=False)
    raw_labels = np.load(labels_file, allow_pickle=False)
    if features.ndim != 2 or len(features) != len(raw_labels):
        raise BenchmarkInputError(
            f"{features_file} has shape {features.shape} but {labels_file} has "
            f"{len(raw_labels)} labels; need (n_images, d) and n_images labels"
        )
    names, labels = np.unique(raw_labels, return_inverse=True)
    return features, labels, [str(name) for name in names], f"file:{features_file.name}"


def _default_sample(n_images: int, seed: int) -> Path:
    from bulkshift.datasets import build_fashion_mnist

    folder = (
        DEFAULT_SAMPLE
        if n_images == 3000
        else DEFAULT_SAMPLE.with_name(f"fashion-mnist-{n_images}")
    )
    logger.info("Using the Fashion-MNIST sample in %s", folder)
    build_fashion_mnist(folder, n_images=n_images, seed=seed)
    return folder


def _extract_folder(folder: Path, arguments: argparse.Namespace):
    from bulkshift.datasets import load_folder
    from bulkshift.features import get_extractor
    from bulkshift.features.cache import DirectoryFeatureCache, extract_cached
    from bulkshift.features.extractors import WeightsUnavailableError

    dataset = load_folder(folder)
    try:
        weights = arguments.vgg16_weights or "default"
        extractor = get_extractor(arguments.extractor, weights=weights)
        if arguments.extractor == "vgg16":
            extractor.load()
    except WeightsUnavailableError as error:
        logger.warning("%s", error)
        logger.warning("Falling back to the pixels extractor.")
        extractor = None
    if extractor is None or arguments.extractor == "pixels":
        extractor = get_extractor(
            "pixels", pca_components=arguments.pca or None, seed=arguments.seed
        )

    cache = DirectoryFeatureCache(arguments.cache_dir)
    result = extract_cached(extractor, dataset.paths, cache, progress=True)
    for item, message in result.errors:
        logger.warning("skipped %s: %s", item, message)
    labels = np.asarray(dataset.labels)[result.ok_indices]
    return result.features, labels, list(dataset.label_names), result.extractor_id


def _simulate_one(features, labels, arguments, classifier, measure, strategy):
    # One BLAS thread per simulation: on a small machine, BLAS threads fighting over
    # the cores made a logistic regression fit 30 times slower than running
    # simulations side by side.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return simulate(
            features,
            labels,
            classifier=classifier,
            uncertainty=measure,
            strategy=strategy,
            threshold=arguments.threshold,
            batch_size=arguments.batch_size,
            n_clusters=arguments.n_clusters,
            random_state=arguments.seed,
        )


def grid_of(arguments: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Every classifier x measure x strategy, in the order the tables list them."""
    classifiers = _split_names(arguments.classifiers, CLASSIFIERS, "classifier")
    measures = _split_names(arguments.uncertainty, MEASURES, "uncertainty measure")
    strategies = _split_names(arguments.strategy, STRATEGIES, "strategy")
    return [
        (classifier, measure, strategy)
        for classifier in classifiers
        for measure in measures
        for strategy in strategies
    ]


def run_grid(features, labels, arguments) -> list[SimulationResult]:
    """Run the grid, two simulations side by side on two cores."""
    grid = grid_of(arguments)
    results: dict[tuple, SimulationResult] = {}
    with concurrent.futures.ProcessPoolExecutor(max(1, arguments.jobs)) as pool:
        futures = {
            pool.submit(_simulate_one, features, labels, arguments, *cell): cell
            for cell in grid
        }
        for future in concurrent.futures.as_completed(futures):
            cell = futures[future]
            result = results[cell] = future.result()
            if not arguments.quiet:
                print(
                    f"[{len(results)}/{len(grid)}] {' '.join(cell)}: "
                    f"AUC {result.auc:.3f}, clicks {result.clicks_fraction:.1%}, "
                    f"{result.rounds} rounds, {result.seconds:.1f} s",
                    flush=True,
                )
    return [results[cell] for cell in grid]


def baselines(features, labels, arguments) -> dict:
    """Manual correction and the oracle bound, from the same pre-sort as the runs."""
    n_clusters = arguments.n_clusters or int(labels.max()) + 1
    folders = presort(features, n_clusters, random_state=arguments.seed)
    names = name_by_majority(folders.assignments, labels, n_clusters)
    initial = names[folders.assignments]
    return {
        "initial_completeness": round(float(np.mean(initial == labels)), 4),
        "manual": _rounded(manual_baseline(initial, labels, arguments.threshold)),
        "oracle": _rounded(oracle_baseline(initial, labels, arguments.threshold)),
    }


def _rounded(record: dict) -> dict:
    return {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in record.items()
    }


def format_tables(results: list[SimulationResult], base: dict) -> str:
    """Table I (AUC), Table II (seconds) and clicks per strategy, as plain text."""
    lines = []
    classifiers = list(dict.fromkeys(result.classifier for result in results))
    measures = list(dict.fromkeys(result.uncertainty for result in results))
    strategies = list(dict.fromkeys(result.strategy for result in results))
    by_key = {(r.classifier, r.uncertainty, r.strategy): r for r in results}

    def table(title: str, cell) -> None:
        lines.append(title)
        lines.append(f"{'':>10}" + "".join(f"{measure:>18}" for measure in measures))
        for classifier in classifiers:
            cells = "".join(
                f"{cell(by_key[(classifier, measure, strategy)]):>18}"
                for measure in measures
            )
            lines.append(f"{classifier:>10}{cells}")
        lines.append("")

    for strategy in strategies:
        lines.append(f"=== strategy: {strategy} — {STRATEGIES[strategy].description}")
        table("Table I — AUC", lambda r: f"{r.auc:.3f}")
        table("Table II — seconds per simulation", lambda r: f"{r.seconds:.1f}")
        table("Clicks / images", lambda r: f"{r.clicks_fraction:.1%}")
        table("Rounds", lambda r: str(r.rounds))
        table(
            "Proposals accepted / shown, mean purity",
            lambda r: (
                f"{r.proposals_accepted}/{len(r.proposals)} "
                + ("-" if r.mean_purity is None else f"{r.mean_purity:.0%}")
            ),
        )

    manual, oracle = base["manual"], base["oracle"]
    lines.append(
        f"Baselines from the same pre-sort ({base['initial_completeness']:.1%} "
        "complete):"
    )
    lines.append(
        f"  manual correction: {manual['clicks_fraction']:.1%} clicks, "
        f"AUC {manual['auc']:.3f}"
    )
    lines.append(
        f"  oracle lower bound: {oracle['clicks_fraction']:.1%} clicks, "
        f"AUC {oracle['auc']:.3f}"
    )
    return "\n".join(lines)


def plot_curves(results: list[SimulationResult], base: dict, path: Path) -> None:
    """Learning curves like the paper's Figure 3, one panel per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(result.strategy for result in results))
    n_columns = min(2, len(strategies))
    n_rows = -(-len(strategies) // n_columns)
    # Shared axes, so the panels compare at a glance: a curve further left needs
    # fewer clicks for the same completeness.
    figure, axes = plt.subplots(
        n_rows,
        n_columns,
        figsize=(6.5 * n_columns, 4.5 * n_rows),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for axis in axes.flat[len(strategies) :]:
        axis.set_visible(False)
    for axis, strategy in zip(axes.flat, strategies):
        for result in (r for r in results if r.strategy == strategy):
            axis.plot(
                result.clicks / result.n_images,
                result.completeness,
                label=f"{result.classifier} / {result.uncertainty} "
                f"(AUC {result.auc:.3f})",
                linewidth=1.2,
            )
        start = base["initial_completeness"]
        manual = base["manual"]["clicks_fraction"]
        axis.plot(
            [0, manual],
            [start, start + manual],
            "k--",
            linewidth=1,
            label="manual correction",
        )
        axis.set_title(f"strategy: {strategy}")
        axis.set_xlabel("clicks / images")
        axis.set_ylabel("completeness")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"Learning curves, {results[0].n_images} images, threshold "
        f"{results[0].threshold}, seed {results[0].seed}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    arguments = parse_arguments(argv)
    if not 0 < arguments.threshold <= 1:
        raise BenchmarkInputError(
            f"--threshold {arguments.threshold} must be in (0, 1]"
        )
    grid_of(arguments)  # refuse unknown names before spending time on features

    started = time.perf_counter()
    features, labels, names, extractor_id = load_arrays(arguments)
    print(
        f"{len(labels)} images, {len(names)} categories, features "
        f"{features.shape[1]}-d "
        f"from {extractor_id}, seed {arguments.seed}, threshold {arguments.threshold}",
        flush=True,
    )

    # Folders list images category by category; a seeded shuffle keeps that order
    # from leaking into the simulation through index tie-breaks (a decision tree's
    # probabilities are all 0 or 1, so its whole round would be one category).
    order = np.random.default_rng(arguments.seed).permutation(len(labels))
    features, labels = features[order], labels[order]

    base = baselines(features, labels, arguments)
    grid_started = time.perf_counter()
    results = run_grid(features, labels, arguments)
    grid_seconds = time.perf_counter() - grid_started

    print()
    print(format_tables(results, base))
    print(
        f"\nWhole grid: {grid_seconds:.1f} s for {len(results)} simulations "
        f"({time.perf_counter() - started:.1f} s with features)"
    )

    if arguments.json:
        record = {
            "seed": arguments.seed,
            "extractor": extractor_id,
            "n_images": int(len(labels)),
            "n_labels": len(names),
            "threshold": arguments.threshold,
            "grid_seconds": round(grid_seconds, 2),
            "baselines": base,
            "runs": [result.summary() for result in results],
        }
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(record, indent=2))
        print(f"JSON: {arguments.json}")
    if arguments.plot:
        plot_curves(results, base, arguments.plot)
        print(f"Plot: {arguments.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
