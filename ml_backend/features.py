"""Features of the project's images, cached in Redis by image content.

The vector of an image is stored under ``bulkshift:features:<extractor>:<sha256>``
(the key format of ``docs/ARCHITECTURE.md``), so two projects with the same image pay
once. The backend also remembers, per project, which content hash each task's image
URL had (``bulkshift:backend:project:P:images``), so a retrain reads vectors straight
from Redis without downloading the images again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bulkshift.features.extractors import (
    FeatureExtractor,
    WeightsUnavailableError,
    get_extractor,
)
from bulkshift.store import BackendStore, project_key
from ml_backend.images import ImageReader

logger = logging.getLogger(__name__)


def images_key(project: int) -> str:
    """Hash task id -> ``{"url", "sha256"}`` of the image last read for that task."""
    return project_key(project, "backend:images")


# Progress is reported (and vectors cached) after this many batches.
COMPUTE_BATCHES_PER_REPORT = 4

_extractors: dict[str, FeatureExtractor] = {}


def load_extractor(name: str) -> FeatureExtractor:
    """The extractor ``name``, built once per process.

    ``vgg16`` without weights falls back to ``pixels`` with one log line that says how
    to supply the weights.
    """
    if name in _extractors:
        return _extractors[name]
    try:
        extractor = get_extractor(name)
    except WeightsUnavailableError as error:
        logger.warning(
            "VGG16 ImageNet weights are unavailable (%s); using the pixels extractor "
            "instead. Set BULKSHIFT_VGG16_WEIGHTS=/path/to/"
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 for VGG16 features.",
            error.reason,
        )
        extractor = get_extractor("pixels")
    _extractors[name] = extractor
    return extractor


@dataclass
class TaskFeatures:
    """Feature vectors of the tasks whose image could be read.

    Attributes
    ----------
    task_ids : list of int
        In the order of the rows of ``features``.
    features : ndarray of float32 of shape (n_tasks, dim)
    errors : dict of int to str
        Task id -> why its image could not be read.
    extractor_id : str
    computed : int
        Vectors computed now (the others came from the cache).
    """

    task_ids: list[int]
    features: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)
    extractor_id: str = ""
    computed: int = 0


def task_features(
    project: int,
    image_urls: dict[int, str],
    store: BackendStore,
    extractor: FeatureExtractor,
    fetch: ImageReader | Callable[[str], bytes],
    batch_size: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> TaskFeatures:
    """Features of every task in ``image_urls`` (task id -> image URL).

    Images are read only for tasks whose URL is new or whose vector is not cached,
    by ``fetch``: an :class:`~ml_backend.images.ImageReader` (disk or HTTP, several
    at once), or a plain ``fetch(url) -> bytes`` that is given one. One image that
    cannot be fetched or decoded is an error for its task, logged with the task id,
    and the others proceed. ``progress(stage, done, total)`` is called as images are
    read and computed.
    """
    report = progress or (lambda stage, done, total: None)
    extractor_id = extractor.per_image_id
    known = {
        int(task): json.loads(value)
        for task, value in store.redis.hgetall(images_key(project)).items()
    }

    # Step 1: tasks whose image was seen before with the same URL reuse its hash.
    digests: dict[int, str] = {}
    for task, url in image_urls.items():
        record = known.get(task)
        if record and record.get("url") == url:
            digests[task] = record["sha256"]
    cached = dict(
        zip(digests, store.get_features(extractor_id, list(digests.values())))
    )
    vectors = {task: vector for task, vector in cached.items() if vector is not None}

    # Step 2: read the rest (several at once); identical bytes are computed once.
    reader = fetch if isinstance(fetch, ImageReader) else ImageReader(fetch)
    errors: dict[int, str] = {}
    pending: dict[str, bytes] = {}
    waiting: dict[str, list[int]] = {}
    url_of: dict[str, str] = {}
    new_records: dict[int, str] = {}
    to_fetch = [task for task in image_urls if task not in vectors]
    report("reading images", 0, len(to_fetch))
    read = reader.read_many(image_urls[task] for task in to_fetch)
    for done, (task, (content, error)) in enumerate(zip(to_fetch, read), start=1):
        if done % 50 == 0:
            report("reading images", done, len(to_fetch))
        url = image_urls[task]
        if error is not None:  # the others still proceed
            message = str(error)
            if url and url[:200] not in message:
                message = f"{url[:200]}: {message}"
            errors[task] = message
            logger.warning("project %d task %d: %s", project, task, error)
            continue
        digest = hashlib.sha256(content).hexdigest()
        digests[task] = digest
        new_records[task] = json.dumps({"url": url, "sha256": digest})
        waiting.setdefault(digest, []).append(task)
        pending.setdefault(digest, content)
        url_of.setdefault(digest, url)

    if pending:
        known_vectors = store.get_features(extractor_id, list(pending))
        for digest, vector in zip(list(pending), known_vectors):
            if vector is not None:
                for task in waiting.pop(digest):
                    vectors[task] = vector
                del pending[digest]

    # Step 3: compute the missing vectors in batches, a few batches per call so that
    # progress is reported (and the vectors cached) as the work goes.
    computed = 0
    order = list(pending)
    chunk = max(1, batch_size) * COMPUTE_BATCHES_PER_REPORT
    if order:
        report("computing features", 0, len(order))
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        result = extractor.extract_per_image(
            [pending[digest] for digest in part],
            batch_size=batch_size,
            progress=False,
            names=[
                f"task {waiting[digest][0]} ({url_of[digest][:200]})" for digest in part
            ],
        )
        fresh = {
            part[i]: result.features[row] for row, i in enumerate(result.ok_indices)
        }
        store.put_features(extractor_id, fresh)
        computed += len(fresh)
        for digest, vector in fresh.items():
            for task in waiting[digest]:
                vectors[task] = vector
        # The extractor has logged each unreadable image with its task and URL.
        for item_index, message in _error_positions(result, part):
            for task in waiting[part[item_index]]:
                errors[task] = message
        report("computing features", min(start + chunk, len(order)), len(order))

    if new_records:
        store.redis.hset(images_key(project), mapping=new_records)

    task_ids = [task for task in image_urls if task in vectors]
    features = (
        np.stack([vectors[task] for task in task_ids]).astype(np.float32)
        if task_ids
        else np.empty((0, extractor.per_image_dim), dtype=np.float32)
    )
    return TaskFeatures(task_ids, features, errors, extractor_id, computed)


def _error_positions(result, order: list[str]) -> list[tuple[int, str]]:
    """Input positions of the images the extractor could not read, with the reason."""
    ok = {int(i) for i in result.ok_indices}
    failed = [i for i in range(len(order)) if i not in ok]
    messages = [message for _, message in result.errors]
    return list(zip(failed, messages))
