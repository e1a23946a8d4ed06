"""Feature caches: an image's vector is computed once per extractor, ever.

A vector is stored under the SHA-256 of the image's bytes and the extractor's
``per_image_id``, so renaming or copying a file keeps its features, and changing the
extractor (or its weights) never serves stale ones. Two backends share one interface
(:class:`FeatureCache`):

- :class:`DirectoryFeatureCache`: one small file per vector under a folder, written
  atomically, safe for several processes at once;
- :class:`RedisFeatureCache`: one Redis string per vector, key
  ``bulkshift:features:<extractor_id>:<sha256>``, read and written in pipelined
  ``MGET``/``MSET`` chunks.

Both store the vector as raw little-endian float32 bytes (``dim * 4`` bytes, no
header). A stored value of the wrong length is treated as a miss and recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bulkshift.features.extractors import (
    DEFAULT_BATCH_SIZE,
    ExtractionResult,
    FeatureExtractor,
    progress_bar,
)
from bulkshift.features.images import ImageReadError, ImageSource, read_bytes

logger = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "bulkshift:features:"
_FLOAT32 = np.dtype("<f4")
# Misses are computed and stored this many batches at a time.
_BATCHES_PER_CHUNK = 8
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def image_digest(data: bytes) -> str:
    """SHA-256 of an image's bytes, as 64 hex digits: the cache key of its features."""
    return hashlib.sha256(data).hexdigest()


def _check_extractor_id(extractor_id: str) -> None:
    # The id becomes a folder name and part of a Redis key.
    if not _SAFE_ID.match(extractor_id):
        raise ValueError(
            f"extractor_id {extractor_id!r} may contain only letters, digits, '.', '_' "
            "and '-'"
        )


def _decode(value: bytes | None, dim: int) -> np.ndarray | None:
    if value is None or len(value) != dim * _FLOAT32.itemsize:
        return None
    return np.frombuffer(value, dtype=_FLOAT32)


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=_FLOAT32).tobytes()


class FeatureCache:
    """Interface of a feature cache."""

    def get_many(
        self, extractor_id: str, digests: Sequence[str], dim: int
    ) -> list[np.ndarray | None]:
        """The stored vector of each digest (float32, shape (dim,)), None if missing."""
        raise NotImplementedError

    def put_many(self, extractor_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by digest (overwrites)."""
        raise NotImplementedError


class DirectoryFeatureCache(FeatureCache):
    """Vectors as files ``<root>/<extractor_id>/<sha[:2]>/<sha>.f32``.

    Reading a vector is one ``open`` and ``read`` of 2 KB (512 floats); the two-letter
    subfolders keep folders small for hundreds of thousands of images.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, extractor_id: str, digest: str) -> Path:
        return self.root / extractor_id / digest[:2] / f"{digest}.f32"

    def get_many(self, extractor_id, digests, dim):
        _check_extractor_id(extractor_id)
        vectors = []
        for digest in digests:
            try:
                with open(self._path(extractor_id, digest), "rb") as stream:
                    vectors.append(_decode(stream.read(), dim))
            except FileNotFoundError:
                vectors.append(None)
        return vectors

    def put_many(self, extractor_id, vectors):
        _check_extractor_id(extractor_id)
        for digest, vector in vectors.items():
            path = self._path(extractor_id, digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader in another process never sees half a file.
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(_encode(vector))
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise


class RedisFeatureCache(FeatureCache):
    """Vectors as Redis strings ``bulkshift:features:<extractor_id>:<sha256>``.

    Parameters
    ----------
    client : redis.Redis
        A client with ``decode_responses=False`` (values are raw bytes).
    chunk_size : int, default=1000
        Keys per ``MGET``/``MSET`` command.
    """

    def __init__(self, client: Any, chunk_size: int = 1000):
        self.client = client
        self.chunk_size = chunk_size

    @classmethod
    def from_url(cls, url: str, **options) -> RedisFeatureCache:
        import redis

        return cls(redis.Redis.from_url(url, decode_responses=False), **options)

    @staticmethod
    def key(extractor_id: str, digest: str) -> str:
        return f"{REDIS_KEY_PREFIX}{extractor_id}:{digest}"

    def get_many(self, extractor_id, digests, dim):
        _check_extractor_id(extractor_id)
        keys = [self.key(extractor_id, digest) for digest in digests]
        pipeline = self.client.pipeline(transaction=False)
        for start in range(0, len(keys), self.chunk_size):
            pipeline.mget(keys[start : start + self.chunk_size])
        values = [value for chunk in pipeline.execute() for value in chunk]
        return [_decode(value, dim) for value in values]

    def put_many(self, extractor_id, vectors):
        _check_extractor_id(extractor_id)
        items = [(self.key(extractor_id, d), _encode(v)) for d, v in vectors.items()]
        pipeline = self.client.pipeline(transaction=False)
        for start in range(0, len(items), self.chunk_size):
            pipeline.mset(dict(items[start : start + self.chunk_size]))
        pipeline.execute()


def extract_cached(
    extractor: FeatureExtractor,
    items: Sequence[ImageSource],
    cache: FeatureCache | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> ExtractionResult:
    """Like ``extractor.extract(items)``, computing only the images not in ``cache``.

    Each file is read to hash it, and read again only on a miss; the vector is stored
    under the hash of the bytes it was computed from. Set-level steps (PCA) run after
    the cache on the whole set, so only per-image
    vectors are ever stored.

    Parameters
    ----------
    extractor : FeatureExtractor
    items : sequence of paths or bytes
    cache : FeatureCache or None
        None computes everything (no caching).
    batch_size : int, default=32
    progress : bool, default=True

    Returns
    -------
    ExtractionResult
        As :meth:`FeatureExtractor.extract`; errors name the items as given.
    """
    if cache is None:
        return extractor.extract(items, batch_size=batch_size, progress=progress)

    items = list(items)
    cache_id, dim = extractor.per_image_id, extractor.per_image_dim
    errors: dict[int, str] = {}

    # Step 1: hash every file; the bytes are not kept, so memory stays flat however
    # many images there are.
    digests: dict[int, str] = {}
    for position, item in enumerate(items):
        try:
            digests[position] = image_digest(read_bytes(item))
        except ImageReadError as error:
            logger.warning("%s", error)
            errors[position] = str(error)

    # Step 2: look every vector up at once.
    features = np.empty((len(items), dim), dtype=np.float32)
    found = np.zeros(len(items), dtype=bool)
    stored = cache.get_many(cache_id, list(digests.values()), dim)
    for position, vector in zip(digests, stored):
        if vector is not None:
            features[position] = vector
            found[position] = True

    # Step 3: compute the misses, identical files once, storing each chunk as soon as
    # it is done so an interrupted run keeps what it computed.
    waiting: dict[str, list[int]] = {}
    for position, digest in digests.items():
        if not found[position]:
            waiting.setdefault(digest, []).append(position)
    logger.info(
        "Feature cache %s: %d hits, %d images to compute",
        cache_id,
        int(found.sum()),
        len(waiting),
    )
    order = list(waiting)
    chunk_size = max(batch_size, 1) * _BATCHES_PER_CHUNK
    bar = progress_bar(len(order), progress, extractor.per_image_id)
    try:
        for start in range(0, len(order), chunk_size):
            chunk = order[start : start + chunk_size]
            _compute_chunk(
                extractor,
                items,
                chunk,
                waiting,
                batch_size,
                cache,
                features,
                found,
                errors,
            )
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()

    ok_indices = np.flatnonzero(found)
    error_indices = sorted(errors)
    return ExtractionResult(
        features=extractor.finalize(features[ok_indices]),
        ok_indices=ok_indices,
        errors=[(items[position], errors[position]) for position in error_indices],
        extractor_id=extractor.extractor_id,
        error_indices=np.asarray(error_indices, dtype=np.intp),
    )


def _compute_chunk(
    extractor: FeatureExtractor,
    items: list,
    chunk: list[str],
    waiting: dict[str, list[int]],
    batch_size: int,
    cache: FeatureCache,
    features: np.ndarray,
    found: np.ndarray,
    errors: dict[int, str],
) -> None:
    """Compute and store the vectors of one chunk of missing digests, in place."""
    sources, digests, chunk_positions = [], [], []
    for digest in chunk:
        first = waiting[digest][0]
        try:
            content = read_bytes(items[first])
        except ImageReadError as error:  # deleted since it was hashed
            for position in waiting[digest]:
                errors[position] = str(error)
            continue
        sources.append(content)
        # The key is the digest of the bytes decoded now, in case the file changed.
        digests.append(image_digest(content))
        chunk_positions.append(waiting[digest])

    computed = extractor.extract_per_image(
        sources,
        batch_size=batch_size,
        progress=False,
        names=[_name(items[positions[0]]) for positions in chunk_positions],
    )
    new_vectors = {}
    for row, index in enumerate(computed.ok_indices):
        new_vectors[digests[index]] = computed.features[row]
        features[chunk_positions[index]] = computed.features[row]
        found[chunk_positions[index]] = True
    for index, (_, message) in zip(computed.error_indices, computed.errors):
        for position in chunk_positions[index]:
            errors[position] = message
    if new_vectors:
        cache.put_many(extractor.per_image_id, new_vectors)


def _name(item: ImageSource) -> str | None:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return None
    return os.fspath(item)
