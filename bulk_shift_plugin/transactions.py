"""The shift transaction log: every batch move is a record in Redis before it starts.

A record (``bulkshift:shift:<id>``) lists every moved task with its previous label,
origin and annotation id, written *before* Label Studio is touched, and its status
moves ``pending -> applying -> applied`` (or ``failed``, from which a retry goes back
to ``applying``). An applied shift can be undone (``undone``) by a reverse shift that
is itself a record. Applied and undo shifts are listed in
``bulkshift:project:P:shifts``, newest last. The service and ``scripts/relabel.py``
share this code, so both write the same log.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.errors import UnknownShiftError
from bulk_shift_plugin.state import now_iso

logger = logging.getLogger(__name__)

Status = Literal["pending", "applying", "applied", "failed", "undone"]
Kind = Literal["shift", "naming", "relabel", "undo"]


@dataclass
class Move:
    """One task of a shift: ``previous_label -> label``.

    ``label`` None means "no annotation" (undoing a move of a task that had none).
    ``origin`` and ``shift_id`` are what the task's state says after the move; the
    ``previous_*`` fields are what an undo restores.
    """

    task: int
    label: str | None
    origin: str
    previous_label: str | None
    previous_origin: str | None
    previous_annotation_id: int | None = None
    previous_shift_id: str | None = None
    shift_id: str | None = None


@dataclass
class ShiftRecord:
    """A batch move and its progress.

    Attributes
    ----------
    id : str
    project : int
    kind : {"shift", "naming", "relabel", "undo"}
        ``shift``: an accepted proposal; ``naming``: the cluster naming step;
        ``relabel``: the CLI; ``undo``: the reverse of ``undoes``.
    source, destination : str or None
        The labels of the move A -> B (None for naming and undo, whose moves differ).
    seed_task : int or None
        The task whose move by a person caused the proposal.
    moves : list of Move
    status : {"pending", "applying", "applied", "failed", "undone"}
    attempts : int
        How many times applying was started (the retry count plus one).
    steps : list of dict
        ``{"step", "attempt", "tasks", "at"}`` for each Label Studio call done.
    moved : list of int
        Tasks confirmed to carry their new label in Label Studio.
    corrected : list of int
        Members a person later moved away from the destination (impure members).
    """

    id: str
    project: int
    kind: Kind
    moves: list[Move]
    source: str | None = None
    destination: str | None = None
    seed_task: int | None = None
    proposal_id: str | None = None
    rank: int | None = None
    undoes: str | None = None
    undone_by: str | None = None
    auto_applied: bool = False
    created_at: str = field(default_factory=now_iso)
    applied_at: str | None = None
    status: Status = "pending"
    attempts: int = 0
    steps: list[dict] = field(default_factory=list)
    moved: list[int] = field(default_factory=list)
    corrected: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def task_ids(self) -> list[int]:
        return [move.task for move in self.moves]

    @property
    def purity(self) -> float | None:
        """Correct members / members: a member is correct until a person moves it
        away from where the shift put it. None for an undo or an empty shift."""
        if not self.moves or self.kind == "undo":
            return None
        members = set(self.task_ids)
        return 1.0 - len(set(self.corrected) & members) / len(members)

    @property
    def purity_text(self) -> str:
        """Purity as a percentage that never rounds a correction away: one wrong
        member of 372 shows as 99.7 %, not 100 %."""
        if self.purity is None:
            return ""
        percent = math.floor(self.purity * 1000) / 10
        text = f"{percent:.0f}%" if percent in (0.0, 100.0) else f"{percent:.1f}%"
        corrected = len(set(self.corrected) & set(self.task_ids))
        if corrected:
            text += f" ({corrected} of {len(set(self.task_ids))} corrected)"
        return text

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShiftRecord:
        record = json.loads(text)
        record["moves"] = [Move(**move) for move in record["moves"]]
        return cls(**record)

    def summary(self) -> str:
        """One line for logs and the CLI: from, to, how many, status, purity."""
        route = (
            f"{self.source} -> {self.destination}"
            if self.source is not None or self.destination is not None
            else self.kind
        )
        purity = "" if self.purity is None else f", purity so far {self.purity_text}"
        size = f"{len(self.moves)} tasks"
        return f"{self.id} {self.kind} {route}: {size}, {self.status}{purity}"


def new_shift_id() -> str:
    return uuid.uuid4().hex[:12]


class ShiftLog:
    """Store and list shift records."""

    def __init__(self, redis_client: redis.Redis):
        self.redis = redis_client

    def create(self, record: ShiftRecord) -> ShiftRecord:
        """Store a new record (status ``pending``) and list it in its project."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.shift(record.id), record.to_json())
        pipe.rpush(keys.shifts(record.project), record.id)
        pipe.execute()
        return record

    def save(self, record: ShiftRecord) -> None:
        self.redis.set(keys.shift(record.id), record.to_json())

    def get(self, shift_id: str) -> ShiftRecord:
        raw = self.redis.get(keys.shift(shift_id))
        if raw is None:
            raise UnknownShiftError(
                f"no shift {shift_id!r} is recorded; list the shifts with "
                "`scripts/relabel.py shifts --project P`"
            )
        return ShiftRecord.from_json(raw)

    def list(self, project: int) -> list[ShiftRecord]:
        """Every shift of ``project``, oldest first."""
        ids = [
            i.decode() if isinstance(i, bytes) else i
            for i in self.redis.lrange(keys.shifts(project), 0, -1)
        ]
        if not ids:
            return []
        raws = self.redis.mget([keys.shift(i) for i in ids])
        return [ShiftRecord.from_json(raw) for raw in raws if raw is not None]

    def mark(
        self, record: ShiftRecord, status: Status, error: str | None = None
    ) -> None:
        record.status = status
        record.error = error
        if status == "applied":
            record.applied_at = now_iso()
        self.save(record)

    def add_step(self, record: ShiftRecord, step: str, tasks: int) -> None:
        record.steps.append(
            {"step": step, "attempt": record.attempts, "tasks": tasks, "at": now_iso()}
        )
        self.save(record)

    def record_correction(self, shift_id: str, task_id: int) -> ShiftRecord | None:
        """Note that a person moved ``task_id`` away from where the shift put it.

        Read-modify-write under WATCH: webhooks for several corrected members arrive
        in parallel threads, and each must count.
        """
        key = keys.shift(shift_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    record = ShiftRecord.from_json(raw)
                    if int(task_id) in record.corrected or int(task_id) not in set(
                        record.task_ids
                    ):
                        pipe.unwatch()
                        return record
                    record.corrected.append(int(task_id))
                    pipe.multi()
                    pipe.set(key, record.to_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        logger.info(
            "shift %s: a person corrected task %s; purity now %s",
            shift_id,
            task_id,
            record.purity_text,
        )
        return record
