#!/usr/bin/env python
"""How fast are features computed, and how fast are they read back from the cache?

Prints images per second for

1. VGG16 extraction (decode, resize to 224 x 224, preprocess, network) on N images,
   for each batch size asked. Random weights (``weights=None``) are used: the compute
   is the same as with ImageNet weights, and no file is needed;
2. a cached second pass over M images (hash every file, look every vector up), with
   the directory cache and, when ``redis-server`` is installed, a Redis cache started
   here on a free port.

Targets: VGG16 >= 3.5 images/s and cached pass >= 2,000 images/s on 2 cores.

The images are a Fashion-MNIST sample built under --work-dir (Debian's
dataset-fashion-mnist) unless --images names a folder-per-category tree.

Examples
--------
    python scripts/bench_features.py
    python scripts/bench_features.py --n-vgg16 64 --batch-sizes 8,16,32 --cores 2
    python scripts/bench_features.py --images data/emoji --n-cached 1306
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# TensorFlow's start-up chatter would drown the figures.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bulkshift.datasets import build_fashion_mnist, load_folder  # noqa: E402
from bulkshift.features import (  # noqa: E402
    DirectoryFeatureCache,
    RedisFeatureCache,
    extract_cached,
    get_extractor,
    image_digest,
)

VGG16_TARGET = 3.5
CACHED_TARGET = 2000.0


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Targets: VGG16 >= 3.5 images/s, cached pass >= 2,000 images/s.",
    )
    parser.add_argument("--images", type=Path, help="folder-per-category tree to use")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bulkshift-bench-features",
        help="where the sample and the caches go (default: %(default)s)",
    )
    parser.add_argument(
        "--n-vgg16",
        type=int,
        default=48,
        help="images for VGG16 (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-sizes",
        default="16",
        help="comma-separated VGG16 batch sizes to time (default: %(default)s)",
    )
    parser.add_argument(
        "--precisions",
        default="auto,float32",
        help="comma-separated VGG16 precisions to time: auto (bfloat16 on CPUs with "
        "AMX / AVX-512 BF16, else float32), float32, bfloat16 (default: %(default)s)",
    )
    parser.add_argument(
        "--n-cached",
        type=int,
        default=3000,
        help="images for the cached pass (default: %(default)s)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=2,
        help="run on this many cores (CPU affinity; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="sample seed (default: 0)")
    parser.add_argument(
        "--skip-vgg16", action="store_true", help="time the caches only"
    )
    return parser.parse_args(argv)


def pin_cores(n_cores: int) -> list[int]:
    """Restrict this process to its first ``n_cores`` allowed cores (before TF)."""
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[:n_cores]
    os.sched_setaffinity(0, chosen)
    return chosen


def image_paths(arguments) -> list[Path]:
    if arguments.images is not None:
        return load_folder(arguments.images).paths
    sample = arguments.work_dir / "fashion-mnist"
    build_fashion_mnist(sample, n_images=arguments.n_cached, seed=arguments.seed)
    return load_folder(sample).paths


def bench_vgg16(paths: list[Path], batch_sizes: list[int], precision: str) -> float:
    extractor = get_extractor("vgg16", weights=None, precision=precision)
    started = time.perf_counter()
    extractor.load()
    print(
        f"VGG16 {extractor.extractor_id} ({precision} -> {extractor.precision}) built "
        f"in {time.perf_counter() - started:.1f} s"
    )
    # The first call traces the graph; it is not part of the steady rate.
    extractor.extract(paths[:2], batch_size=2, progress=False)

    best = 0.0
    for batch_size in batch_sizes:
        started = time.perf_counter()
        result = extractor.extract(paths, batch_size=batch_size, progress=False)
        rate = result.n_ok / (time.perf_counter() - started)
        best = max(best, rate)
        print(
            f"VGG16 {extractor.precision:>8}, batch {batch_size:>3}: "
            f"{rate:6.2f} images/s on {result.n_ok} images"
        )
    return best


def bench_cache(name: str, cache, paths: list[Path]) -> float:
    extractor = get_extractor("pixels")
    started = time.perf_counter()
    first = extract_cached(extractor, paths, cache, progress=False)
    first_seconds = time.perf_counter() - started

    started = time.perf_counter()
    second = extract_cached(extractor, paths, cache, progress=False)
    rate = second.n_ok / (time.perf_counter() - started)
    print(
        f"{name:<9} cache: first pass {first.n_ok / first_seconds:8.0f} images/s "
        f"(computing {extractor.extractor_id}), cached pass {rate:8.0f} images/s "
        f"on {second.n_ok} images of {extractor.dim} floats"
    )
    return rate


def bench_hashing(paths: list[Path]) -> None:
    started = time.perf_counter()
    for path in paths:
        image_digest(path.read_bytes())
    rate = len(paths) / (time.perf_counter() - started)
    print(f"reading + SHA-256 alone: {rate:8.0f} images/s")


def start_redis(folder: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    import redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.terminate()
                raise
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING)
    cores = pin_cores(arguments.cores)
    print(
        f"cores {cores} (of {os.cpu_count()}), load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, seed {arguments.seed}"
    )

    arguments.work_dir.mkdir(parents=True, exist_ok=True)
    paths = image_paths(arguments)
    cached_paths = paths[: arguments.n_cached]
    print(f"{len(paths)} images available")

    vgg16_rates = {}
    if not arguments.skip_vgg16:
        batch_sizes = [int(size) for size in arguments.batch_sizes.split(",")]
        for precision in arguments.precisions.split(","):
            vgg16_rates[precision] = bench_vgg16(
                paths[: arguments.n_vgg16], batch_sizes, precision
            )

    bench_hashing(cached_paths)
    cache_folder = arguments.work_dir / "feature-cache"
    shutil.rmtree(cache_folder, ignore_errors=True)
    rates = {
        "directory": bench_cache(
            "directory", DirectoryFeatureCache(cache_folder), cached_paths
        )
    }

    with tempfile.TemporaryDirectory() as redis_folder:
        process, client = start_redis(Path(redis_folder))
        if process is None:
            print("redis-server not installed: Redis cache not timed")
        else:
            try:
                rates["redis"] = bench_cache(
                    "redis", RedisFeatureCache(client), cached_paths
                )
            finally:
                client.close()
                process.terminate()
                process.wait(timeout=10)

    print()
    for precision, rate in vgg16_rates.items():
        verdict = "meets" if rate >= VGG16_TARGET else "BELOW"
        print(
            f"VGG16, precision {precision}: {rate:.2f} images/s ({verdict} the "
            f"{VGG16_TARGET} target)"
        )
    for name, rate in rates.items():
        verdict = "meets" if rate >= CACHED_TARGET else "BELOW"
        print(f"cached pass, {name}: {rate:.0f} images/s ({verdict} the 2,000 target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
