"""Every task's current label and where it came from, kept in Redis.

Label Studio's ANNOTATION_UPDATED event carries only the new label, so the service
must remember each task's previous label to see a move A -> B. That memory is the hash
``bulkshift:project:P:tasks`` (task id -> :class:`TaskState` as JSON). Every write also
appends the changed task ids to the stream ``bulkshift:project:P:tasks:changes``, so
the in-memory :class:`ProjectIndex` of each process (the service, the CLI) can catch up
with a few ids instead of re-reading 10,000 entries.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import redis

from bulk_shift_plugin import keys

logger = logging.getLogger(__name__)

Origin = Literal["person", "cluster", "model", "shift"]
ORIGINS = ("person", "cluster", "model", "shift")

# Enough history for the caches of all processes to catch up after a 10,000-task
# naming step; a cache that fell further behind reloads the whole hash.
CHANGES_MAX_LENGTH = 50_000


def now_iso() -> str:
    """The current UTC time as ISO 8601 text."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TaskState:
    """A task's current label and its origin.

    ``origin == "person"`` means a person confirmed the label: the machine never
    changes it silently.
    """

    label: str
    origin: Origin
    annotation_id: int | None = None
    shift_id: str | None = None
    at: str = ""

    @property
    def confirmed(self) -> bool:
        return self.origin == "person"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskState:
        record = json.loads(text)
        return cls(
            label=record["label"],
            origin=record["origin"],
            annotation_id=record.get("annotation_id"),
            shift_id=record.get("shift_id"),
            at=record.get("at", ""),
        )


class TaskStore:
    """Read and write ``bulkshift:project:P:tasks``."""

    def __init__(self, redis_client: redis.Redis):
        self.redis = redis_client

    def get(self, project: int, task_id: int) -> TaskState | None:
        raw = self.redis.hget(keys.tasks(project), str(task_id))
        return TaskState.from_json(raw) if raw is not None else None

    def get_many(self, project: int, task_ids: Iterable[int]) -> dict[int, TaskState]:
        task_ids = [int(task) for task in task_ids]
        if not task_ids:
            return {}
        raws = self.redis.hmget(keys.tasks(project), [str(t) for t in task_ids])
        return {
            task: TaskState.from_json(raw)
            for task, raw in zip(task_ids, raws)
            if raw is not None
        }

    def all(self, project: int) -> dict[int, TaskState]:
        raw = self.redis.hgetall(keys.tasks(project))
        return {int(task): TaskState.from_json(value) for task, value in raw.items()}

    def set_many(
        self,
        project: int,
        states: Mapping[int, TaskState],
        removed: Iterable[int] = (),
    ) -> None:
        """Write ``states`` and delete ``removed`` in one transaction."""
        removed = [int(task) for task in removed]
        if not states and not removed:
            return
        pipe = self.redis.pipeline(transaction=True)
        if states:
            pipe.hset(
                keys.tasks(project),
                mapping={str(task): state.to_json() for task, state in states.items()},
            )
        if removed:
            pipe.hdel(keys.tasks(project), *[str(task) for task in removed])
        changed = [*states, *removed]
        # One stream entry per chunk keeps the stream short for big naming steps.
        for start in range(0, len(changed), 1000):
            chunk = ",".join(str(task) for task in changed[start : start + 1000])
            pipe.xadd(
                keys.tasks_changes(project),
                {"tasks": chunk},
                maxlen=CHANGES_MAX_LENGTH,
                approximate=True,
            )
        pipe.execute()

    def set(self, project: int, task_id: int, state: TaskState) -> None:
        self.set_many(project, {int(task_id): state})


def decode(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


class ProjectIndex:
    """Per-project numpy arrays for the proposal rule, refreshed incrementally.

    Rows are tasks (the union of the tasks this service tracks and those the backend
    recommends for); label names are mapped to indices of
    ``bulkshift:project:P:labels``, with ``-1`` for a name not (yet) in that list.

    Attributes
    ----------
    current_labels : ndarray of int of shape (n_tasks,)
        ``-1`` where the task has no current label.
    confirmed : ndarray of bool of shape (n_tasks,)
    recommendations : ndarray of int of shape (n_tasks, n_recommendations)
        ``-1`` where the backend has no recommendation (yet).
    probabilities : ndarray of float of shape (n_tasks, n_recommendations)
        NaN where unknown.
    """

    def __init__(self, redis_client: redis.Redis, project: int, n_recommendations=10):
        self.redis = redis_client
        self.project = int(project)
        self.n_recommendations = n_recommendations
        self.lock = threading.RLock()
        self.label_names: list[str] = []
        self.label_index: dict[str, int] = {}
        self._task_ids = np.empty(0, dtype=np.int64)
        self.n_tasks = 0
        self.row_of: dict[int, int] = {}
        self.current_labels = np.empty(0, dtype=np.int64)
        self.confirmed = np.empty(0, dtype=bool)
        self.recommendations = np.empty((0, n_recommendations), dtype=np.int64)
        self.probabilities = np.empty((0, n_recommendations), dtype=float)
        self._labels_raw: str | None = None
        self._recommendations_stamp: tuple | None = None
        self._last_change_id: str | None = None
        self._loaded = False

    # -- refresh -------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the arrays up to date with Redis (cheap when nothing changed)."""
        with self.lock:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(keys.labels(self.project))
            pipe.get(keys.model_version(self.project))
            pipe.hlen(keys.recommendations(self.project))
            pipe.xinfo_stream(keys.tasks_changes(self.project))
            labels_raw, model_version, n_recommended, stream_info = pipe.execute(
                raise_on_error=False
            )
            if isinstance(stream_info, Exception):
                stream_info = None  # no change was ever written

            labels_raw = decode(labels_raw)
            labels_changed = labels_raw != self._labels_raw
            if labels_changed:
                self._labels_raw = labels_raw
                self._set_labels(json.loads(labels_raw) if labels_raw else [])

            stamp = (decode(model_version), n_recommended)
            if labels_changed or stamp != self._recommendations_stamp:
                self._load_recommendations()
                self._recommendations_stamp = stamp

            if not self._loaded or labels_changed:
                self._load_all_tasks(stream_info)
            else:
                self._apply_task_changes(stream_info)
            self._loaded = True

    def _set_labels(self, names: list[str]) -> None:
        self.label_names = list(names)
        self.label_index = {name: index for index, name in enumerate(names)}

    def index_of(self, name: str | None) -> int:
        """Label index of ``name``; -1 when it is not in the project's labels."""
        if name is None:
            return -1
        return self.label_index.get(name, -1)

    def name_of(self, index: int) -> str:
        return self.label_names[index]

    def _row(self, task_id: int) -> int:
        row = self.row_of.get(task_id)
        if row is not None:
            return row
        row = self.n_tasks
        if row >= len(self.current_labels):
            self._grow(max(16, 2 * len(self.current_labels)))
        self.row_of[task_id] = row
        self._task_ids[row] = task_id
        self.n_tasks += 1
        return row

    def _grow(self, capacity: int) -> None:
        extra = capacity - len(self.current_labels)
        width = self.n_recommendations
        self._task_ids = np.concatenate([self._task_ids, np.zeros(extra, np.int64)])
        self.current_labels = np.concatenate(
            [self.current_labels, np.full(extra, -1, dtype=np.int64)]
        )
        self.confirmed = np.concatenate([self.confirmed, np.zeros(extra, dtype=bool)])
        self.recommendations = np.concatenate(
            [self.recommendations, np.full((extra, width), -1, dtype=np.int64)]
        )
        self.probabilities = np.concatenate(
            [self.probabilities, np.full((extra, width), np.nan)]
        )

    def _load_recommendations(self) -> None:
        raw = self.redis.hgetall(keys.recommendations(self.project))
        self.recommendations[:] = -1
        self.probabilities[:] = np.nan
        for task, value in raw.items():
            record = json.loads(value)
            row = self._row(int(task))
            names = record.get("labels", [])[: self.n_recommendations]
            probabilities = record.get("probabilities", [])[: self.n_recommendations]
            self.recommendations[row, : len(names)] = [self.index_of(n) for n in names]
            self.probabilities[row, : len(probabilities)] = probabilities

    def _load_all_tasks(self, stream_info) -> None:
        self._last_change_id = self._stream_last_id(stream_info)
        raw = self.redis.hgetall(keys.tasks(self.project))
        self.current_labels[:] = -1
        self.confirmed[:] = False
        for task, value in raw.items():
            self._apply_state(int(task), TaskState.from_json(value))

    @staticmethod
    def _stream_last_id(stream_info) -> str | None:
        if isinstance(stream_info, dict):
            return decode(stream_info.get("last-generated-id"))
        return None

    def _apply_task_changes(self, stream_info) -> None:
        last_id = self._stream_last_id(stream_info)
        if last_id is None or last_id == self._last_change_id:
            return
        first = stream_info.get("first-entry")
        first_id = decode(first[0]) if first else None
        start = self._last_change_id or "0-0"
        if (
            self._last_change_id is not None
            and first_id is not None
            and _stream_id_key(first_id) > _stream_id_key(self._last_change_id)
        ):
            # The entry we saw last was trimmed away, so some changes may be lost.
            logger.info("project %s: task change log trimmed; reloading", self.project)
            self._load_all_tasks(stream_info)
            return
        entries = self.redis.xrange(
            keys.tasks_changes(self.project), min=f"({start}", max=last_id
        )
        changed: set[int] = set()
        for _, fields in entries:
            text = decode(fields.get(b"tasks", fields.get("tasks")))
            changed.update(int(task) for task in text.split(",") if task)
        self._last_change_id = last_id
        if not changed:
            return
        ordered = sorted(changed)
        raws = self.redis.hmget(keys.tasks(self.project), [str(t) for t in ordered])
        for task, raw in zip(ordered, raws):
            if raw is None:
                self._clear_state(task)
            else:
                self._apply_state(task, TaskState.from_json(raw))

    def _apply_state(self, task: int, state: TaskState) -> None:
        row = self._row(task)
        self.current_labels[row] = self.index_of(state.label)
        self.confirmed[row] = state.confirmed

    def _clear_state(self, task: int) -> None:
        row = self.row_of.get(task)
        if row is not None:
            self.current_labels[row] = -1
            self.confirmed[row] = False

    # -- views ---------------------------------------------------------------------

    def arrays(self):
        """``(task_ids, current_labels, confirmed, recommendations, probabilities)``
        trimmed to the known tasks (views, not copies)."""
        n = self.n_tasks
        return (
            self._task_ids[:n],
            self.current_labels[:n],
            self.confirmed[:n],
            self.recommendations[:n],
            self.probabilities[:n],
        )


def _stream_id_key(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)
