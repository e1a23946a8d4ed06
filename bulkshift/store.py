"""Redis keys shared by the ML backend and the bulk-shift service, and the connection.

The keys and their owners are listed in ``docs/ARCHITECTURE.md`` ("Redis keys"). This
module names them once, reads and writes the keys the ML backend owns, and finds a
Redis: ``REDIS_URL`` when set, else an embedded redis-server that the first process to
need it starts under ``BULKSHIFT_DATA_DIR/redis`` and that later processes reuse.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

logger = logging.getLogger(__name__)

PREFIX = "bulkshift"
REDIS_URL_ENV = "REDIS_URL"
DATA_DIR_ENV = "BULKSHIFT_DATA_DIR"
DEFAULT_DATA_DIR = "./var"


# -- key names -----------------------------------------------------------------------
# Every key of the shared state is named here, whichever process owns it; the
# bulk-shift service uses these names through ``bulk_shift_plugin.keys``.

EVENTS_SEEN = f"{PREFIX}:events:seen"


def project_key(project: int, name: str) -> str:
    """``bulkshift:project:<project>:<name>``."""
    return f"{PREFIX}:project:{int(project)}:{name}"


def features_key(extractor_id: str, sha256: str) -> str:
    """One cached feature vector (float32 bytes) of the image with that content hash."""
    return f"{PREFIX}:features:{extractor_id}:{sha256}"


def labels_key(project: int) -> str:
    return project_key(project, "labels")


def clusters_key(project: int) -> str:
    return project_key(project, "clusters")


def recommendations_key(project: int) -> str:
    return project_key(project, "recommendations")


def model_version_key(project: int) -> str:
    return project_key(project, "model_version")


def tasks_key(project: int) -> str:
    """The bulk-shift service's per-task state (current label and its origin)."""
    return project_key(project, "tasks")


def tasks_changes_key(project: int) -> str:
    """Stream of task ids whose entry in ``tasks`` changed (for incremental caches)."""
    return project_key(project, "tasks:changes")


def proposals_key(project: int) -> str:
    return project_key(project, "proposals")


def shifts_key(project: int) -> str:
    return project_key(project, "shifts")


def in_flight_key(project: int) -> str:
    """Set of task ids whose annotations the service is rewriting right now."""
    return project_key(project, "inflight")


def apply_lock_key(project: int) -> str:
    return project_key(project, "apply-lock")


def plugin_settings_key(project: int) -> str:
    """Hash of the service's per-project settings (auto-apply thresholds, webhook)."""
    return project_key(project, "plugin-settings")


def shift_key(shift_id: str) -> str:
    """The record of one shift transaction."""
    return f"{PREFIX}:shift:{shift_id}"


# -- connection ----------------------------------------------------------------------


def data_dir() -> Path:
    """``BULKSHIFT_DATA_DIR`` (default ``./var``) as an absolute path."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).resolve()


def redis_url() -> str:
    """The Redis every process of the stack uses.

    ``REDIS_URL`` when set. Otherwise an embedded redis-server bound to 127.0.0.1 with
    its data in ``BULKSHIFT_DATA_DIR/redis``: the first process to call this starts it
    (it keeps running after that process exits, like a server would; stop it with
    ``scripts/down.sh`` or by the PID in ``redis.pid``) and writes its port to
    ``redis.port``, where later processes find it.
    """
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        return url
    return _embedded_redis_url(data_dir() / "redis")


def _embedded_redis_url(directory: Path) -> str:
    from bulkshift.stack.redis_server import RedisServer

    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / "redis.port"

    # A file lock, so that the backend and its worker starting together start one
    # server between them.
    with open(directory / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if port_file.exists():
            url = f"redis://127.0.0.1:{int(port_file.read_text())}/0"
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                return url
            except redis.ConnectionError:
                logger.info(
                    "embedded Redis in %s is not running; starting it", directory
                )

        server = RedisServer(directory, persist=True).start()
        (directory / "redis.pid").write_text(str(server.pid))
        port_file.write_text(str(server.port))
        # The server outlives this process on purpose (see redis_url).
        server.detach()
        logger.info(
            "no REDIS_URL set: started an embedded Redis at %s (data in %s)",
            server.url,
            directory,
        )
        return server.url


def connect(url: str | None = None) -> redis.Redis:
    """A Redis client for ``url`` (default :func:`redis_url`)."""
    return redis.Redis.from_url(url or redis_url())


def replace_hash(client: redis.Redis, key: str, mapping: dict) -> None:
    """Make the hash ``key`` hold exactly ``mapping`` (nothing when it is empty), in
    one transaction: a reader sees the old hash or the new one, never a mix."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(key)
    if mapping:
        pipe.hset(key, mapping=mapping)
    pipe.execute()


# -- the keys the ML backend owns ------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """The recommended labels of one task, best first."""

    labels: list[str]
    probabilities: list[float]
    model_version: str


class BackendStore:
    """Read and write the ML backend's keys of one Redis.

    Parameters
    ----------
    client : redis.Redis
    """

    def __init__(self, client: redis.Redis):
        self.redis = client

    # labels

    def label_names(self, project: int) -> list[str]:
        raw = self.redis.get(labels_key(project))
        return json.loads(raw) if raw else []

    def set_label_names(self, project: int, names: list[str]) -> None:
        self.redis.set(labels_key(project), json.dumps(list(names)))

    # clusters

    def clusters(self, project: int) -> dict | None:
        """``{"model_version", "clusters": [{"cluster", "name", "tasks"}]}`` or None."""
        raw = self.redis.get(clusters_key(project))
        return json.loads(raw) if raw else None

    def set_clusters(
        self, project: int, model_version: str, clusters: list[dict]
    ) -> None:
        value = {"model_version": model_version, "clusters": clusters}
        self.redis.set(clusters_key(project), json.dumps(value))

    # recommendations

    def recommendations(self, project: int) -> dict[int, Recommendation]:
        raw = self.redis.hgetall(recommendations_key(project))
        return {
            int(task): Recommendation(**json.loads(value))
            for task, value in raw.items()
        }

    def recommendation(self, project: int, task: int) -> Recommendation | None:
        raw = self.redis.hget(recommendations_key(project), int(task))
        return Recommendation(**json.loads(raw)) if raw else None

    def set_recommendations(
        self, project: int, recommendations: dict[int, Recommendation]
    ) -> None:
        """Replace every task's recommendations at once (one transaction)."""
        replace_hash(
            self.redis,
            recommendations_key(project),
            {
                int(task): json.dumps(
                    {
                        "labels": r.labels,
                        "probabilities": [round(float(p), 6) for p in r.probabilities],
                        "model_version": r.model_version,
                    }
                )
                for task, r in recommendations.items()
            },
        )

    # model version

    def model_version(self, project: int) -> str | None:
        raw = self.redis.get(model_version_key(project))
        return raw.decode() if raw else None

    def set_model_version(self, project: int, model_version: str) -> None:
        self.redis.set(model_version_key(project), model_version)

    # features

    def get_features(
        self, extractor_id: str, digests: list[str]
    ) -> list[np.ndarray | None]:
        """Cached vectors of the images with these content hashes (None if missing)."""
        if not digests:
            return []
        raw = self.redis.mget([features_key(extractor_id, d) for d in digests])
        return [
            np.frombuffer(value, dtype=np.float32) if value is not None else None
            for value in raw
        ]

    def put_features(self, extractor_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        self.redis.mset(
            {
                features_key(extractor_id, digest): np.asarray(
                    vector, dtype=np.float32
                ).tobytes()
                for digest, vector in vectors.items()
            }
        )

    # the service's task state (read only here)

    def person_confirmed(self, project: int) -> set[int]:
        """Tasks whose current label the bulk-shift service saw a person set."""
        raw = self.redis.hgetall(tasks_key(project))
        return {
            int(task)
            for task, value in raw.items()
            if json.loads(value).get("origin") == "person"
        }

    def service_tracks_tasks(self, project: int) -> bool:
        """Whether the bulk-shift service keeps the state of any task of the project
        (False when no service runs beside the backend)."""
        return bool(self.redis.hlen(tasks_key(project)))

    def shift_in_flight(self, project: int) -> int:
        """How many tasks a shift of the service is writing right now."""
        return int(self.redis.scard(in_flight_key(project)))

    def service_labels(self, project: int) -> dict[int, str]:
        """Current label of each task the bulk-shift service tracks."""
        raw = self.redis.hgetall(tasks_key(project))
        labels = {}
        for task, value in raw.items():
            label = json.loads(value).get("label")
            if label:
                labels[int(task)] = label
        return labels
