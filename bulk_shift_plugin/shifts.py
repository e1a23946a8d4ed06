"""Apply, retry and undo shifts in Label Studio, recording every step.

Applying a shift:

1. on a retry, read the members' annotations in Label Studio and keep only the tasks
   that do not carry their new label yet (this re-derives the remaining work);
2. per chunk: delete their annotations, import one helper prediction per task with the
   new label under a model version of this shift *and attempt*, turn exactly those
   predictions into annotations;
3. read the members again and require every one to carry exactly one annotation with
   its new label;
4. write the tasks' new state to Redis and mark the record ``applied``;
5. delete the attempt's helper predictions (slow in Label Studio, so the service does
   it in the background; a retry also deletes those of earlier attempts).

Because each attempt has its own helper model version and step 1 skips finished tasks,
a retry after a failure anywhere completes the shift without duplicating an annotation.
Label Studio answers our own calls with ANNOTATIONS_DELETED / ANNOTATIONS_CREATED
webhooks; the members are listed in ``bulkshift:project:P:inflight`` meanwhile, so the
webhook receiver does not mistake them for a person's moves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.errors import (
    BulkShiftServiceError,
    ShiftBusyError,
    ShiftIncompleteError,
    ShiftStateError,
)
from bulk_shift_plugin.labelstudio import (
    LabelStudioGateway,
    TaskAnnotations,
    helper_model_version,
)
from bulk_shift_plugin.state import TaskState, TaskStore, now_iso
from bulk_shift_plugin.transactions import Move, ShiftLog, ShiftRecord, new_shift_id

logger = logging.getLogger(__name__)

IN_FLIGHT_TTL_SECONDS = 900
LOCK_TIMEOUT_SECONDS = 900

StepHook = Callable[[ShiftRecord, str], None]
Progress = Callable[[int], None]


def carries(entry: TaskAnnotations | None, label: str | None) -> bool:
    """True when a task is exactly as a move wants it: one annotation with ``label``,
    or no annotation when ``label`` is None."""
    annotations = entry.annotations if entry is not None else []
    if label is None:
        return not annotations
    return len(annotations) == 1 and annotations[0][1] == label


class ShiftApplier:
    """Turn moves into a recorded, retryable, undoable batch update.

    Parameters
    ----------
    redis_client : redis.Redis
    gateway : LabelStudioGateway
    chunk_size : int
        Tasks per round of the three Label Studio calls (the progress bar's step).
    after_step : callable, optional
        ``after_step(record, step)`` is called after each Label Studio call; tests use
        it to stop Label Studio in the middle of a shift.
    background_cleanup : bool
        Delete the helper predictions in a thread after the shift is applied (the
        service), instead of before returning (the CLI, tests).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        gateway: LabelStudioGateway,
        chunk_size: int = 500,
        after_step: StepHook | None = None,
        background_cleanup: bool = False,
    ):
        self.redis = redis_client
        self.gateway = gateway
        self.log = ShiftLog(redis_client)
        self.tasks = TaskStore(redis_client)
        self.chunk_size = chunk_size
        self.after_step = after_step
        self.background_cleanup = background_cleanup
        self.cleanups: list[threading.Thread] = []

    # -- recording -----------------------------------------------------------------

    def record(
        self,
        project: int,
        kind: str,
        targets: Mapping[int, str | None],
        origin: str,
        **details,
    ) -> ShiftRecord:
        """Create a ``pending`` record for moving each task to ``targets[task]``.

        The previous label and annotation id come from Label Studio, the previous
        origin from the service's task state: all written before anything changes.
        """
        task_ids = [int(task) for task in targets]
        current = self.gateway.task_annotations(project, task_ids)
        states = self.tasks.get_many(project, task_ids)
        shift_id = details.pop("shift_id", None) or new_shift_id()
        moves = []
        for task in task_ids:
            entry = current.get(task)
            state = states.get(task)
            previous_label = entry.label if entry and entry.annotations else None
            if previous_label is None and state is not None:
                previous_label = state.label
            moves.append(
                Move(
                    task=task,
                    label=targets[task],
                    origin=origin,
                    previous_label=previous_label,
                    previous_origin=state.origin if state else None,
                    previous_annotation_id=(
                        entry.annotations[-1][0]
                        if entry and entry.annotations
                        else None
                    ),
                    previous_shift_id=state.shift_id if state else None,
                    shift_id=shift_id,
                )
            )
        record = ShiftRecord(
            id=shift_id, project=int(project), kind=kind, moves=moves, **details
        )
        return self.log.create(record)

    # -- applying ------------------------------------------------------------------

    def apply(
        self, record: ShiftRecord, progress: Progress | None = None
    ) -> ShiftRecord:
        """Apply (or complete) ``record`` in Label Studio; see the module docstring."""
        if record.status not in ("pending", "failed", "applying"):
            raise ShiftStateError(
                f"shift {record.id} is {record.status}; only a pending or failed "
                "shift can be applied"
            )
        lock = self.redis.lock(
            keys.apply_lock(record.project), timeout=LOCK_TIMEOUT_SECONDS
        )
        if not lock.acquire(blocking=True, blocking_timeout=60):
            raise ShiftBusyError(
                f"another shift of project {record.project} is being applied; wait "
                "for it to finish, then retry"
            )
        task_ids = record.task_ids
        in_flight = keys.in_flight(record.project)
        try:
            record.attempts += 1
            record.error = None
            self.log.mark(record, "applying")
            if task_ids:
                pipe = self.redis.pipeline()
                pipe.sadd(in_flight, *task_ids)
                pipe.expire(in_flight, IN_FLIGHT_TTL_SECONDS)
                pipe.execute()
            final = self._apply_moves(record, progress)
            self._write_task_states(record, final)
            self.log.mark(record, "applied")
            cleanup = helper_model_version(record.id, record.attempts)
        except BulkShiftServiceError as error:
            self.log.mark(record, "failed", error=str(error))
            logger.warning(
                "shift %s failed on attempt %d: %s; %d of %d tasks moved so far; "
                "retry completes it",
                record.id,
                record.attempts,
                error,
                len(record.moved),
                len(task_ids),
            )
            raise
        except Exception as error:
            self.log.mark(record, "failed", error=type(error).__name__)
            logger.exception(
                "shift %s failed on attempt %d", record.id, record.attempts
            )
            raise
        finally:
            if task_ids:
                self.redis.srem(in_flight, *task_ids)
            lock.release()
        logger.info("shift applied: %s", record.summary())
        self._clean_up(record.project, cleanup)
        return record

    def _clean_up(self, project: int, model_version: str) -> None:
        """Delete a shift's helper predictions (~9 ms each in Label Studio, so in the
        background unless ``background_cleanup`` is off)."""

        def delete():
            try:
                count = self.gateway.delete_model_version(project, model_version)
                logger.info(
                    "project %s: %d helper predictions %s deleted",
                    project,
                    count,
                    model_version,
                )
            except BulkShiftServiceError as error:
                logger.warning(
                    "project %s: helper predictions %s not deleted (%s); they are "
                    "removed on the next retry or with `relabel.py cleanup`",
                    project,
                    model_version,
                    error,
                )

        if not self.background_cleanup:
            delete()
            return
        thread = threading.Thread(target=delete, daemon=True)
        self.cleanups.append(thread)
        thread.start()

    def wait_for_cleanups(self, timeout: float | None = None) -> None:
        for thread in list(self.cleanups):
            thread.join(timeout)
        self.cleanups = [t for t in self.cleanups if t.is_alive()]

    def _step(self, record: ShiftRecord, step: str, n_tasks: int) -> None:
        self.log.add_step(record, step, n_tasks)
        if self.after_step is not None:
            self.after_step(record, step)

    def _apply_moves(
        self, record: ShiftRecord, progress: Progress | None
    ) -> dict[int, TaskAnnotations]:
        project = record.project
        targets = {move.task: move.label for move in record.moves}
        task_ids = list(targets)

        if record.attempts == 1:
            # Nothing has been done yet: every member is still to move.
            todo = task_ids
            record.moved = []
        else:
            current = self.gateway.task_annotations(project, task_ids)
            todo = [t for t in task_ids if not carries(current.get(t), targets[t])]
            record.moved = [task for task in task_ids if task not in set(todo)]
            self._step(record, "read", len(todo))
            if progress is not None and record.moved:
                progress(len(record.moved))
            # Helper predictions an interrupted attempt left behind would stay.
            for attempt in range(1, record.attempts):
                self.gateway.delete_model_version(
                    project, helper_model_version(record.id, attempt)
                )

        model_version = helper_model_version(record.id, record.attempts)
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            self.gateway.delete_annotations(project, chunk)
            self._step(record, "delete", len(chunk))
            labeled = {
                task: targets[task] for task in chunk if targets[task] is not None
            }
            if labeled:
                self.gateway.import_label_predictions(project, labeled, model_version)
                self._step(record, "import", len(labeled))
                self.gateway.predictions_to_annotations(
                    project, list(labeled), model_version
                )
                self._step(record, "convert", len(labeled))
            record.moved.extend(chunk)
            self.log.save(record)
            if progress is not None:
                progress(len(chunk))

        final = self.gateway.task_annotations(project, task_ids)
        wrong = [
            task for task in task_ids if not carries(final.get(task), targets[task])
        ]
        record.moved = [task for task in task_ids if task not in set(wrong)]
        if wrong:
            raise ShiftIncompleteError(
                f"shift {record.id}: {len(wrong)} of {len(task_ids)} tasks do not "
                "carry "
                f"their new label in Label Studio after attempt {record.attempts} "
                f"(first: {wrong[:5]}); retry the shift"
            )
        return final

    def _write_task_states(
        self, record: ShiftRecord, final: dict[int, TaskAnnotations]
    ) -> None:
        states: dict[int, TaskState] = {}
        removed: list[int] = []
        at = now_iso()
        for move in record.moves:
            if move.label is None:
                removed.append(move.task)
                continue
            entry = final.get(move.task)
            states[move.task] = TaskState(
                label=move.label,
                origin=move.origin,
                annotation_id=entry.annotations[-1][0] if entry else None,
                shift_id=move.shift_id,
                at=at,
            )
        self.tasks.set_many(record.project, states, removed=removed)

    # -- retry and undo ------------------------------------------------------------

    def retry(self, shift_id: str, progress: Progress | None = None) -> ShiftRecord:
        """Complete a failed (or interrupted) shift."""
        record = self.log.get(shift_id)
        if record.status == "applied":
            return record
        return self.apply(record, progress)

    def undo(self, shift_id: str, progress: Progress | None = None) -> ShiftRecord:
        """Apply the reverse of an applied shift; returns the undo record.

        Members a person has changed since the shift are left alone (their label is
        a person's decision now) and counted in the log line.
        """
        original = self.log.get(shift_id)
        if original.status != "applied":
            raise ShiftStateError(
                f"shift {shift_id} is {original.status}; only an applied shift can be "
                "undone (retry a failed one first)"
            )
        states = self.tasks.get_many(original.project, original.task_ids)
        reverse: dict[int, str | None] = {}
        restore: dict[int, Move] = {}
        for move in original.moves:
            state = states.get(move.task)
            untouched = (
                state is not None
                and state.shift_id == original.id
                and state.label == move.label
            ) or (state is None and move.label is None)
            if untouched:
                reverse[move.task] = move.previous_label
                restore[move.task] = move
        skipped = len(original.moves) - len(reverse)

        undo_id = new_shift_id()
        record = self.record(
            original.project,
            "undo",
            reverse,
            origin="shift",
            shift_id=undo_id,
            undoes=original.id,
            source=original.destination,
            destination=original.source,
        )
        # Restore each task's previous origin and shift, not "undo" as its origin.
        for move in record.moves:
            before = restore[move.task]
            move.origin = before.previous_origin or "model"
            move.shift_id = before.previous_shift_id
        self.log.save(record)

        self.apply(record, progress)
        # Read again: corrections a person made meanwhile were saved to the record.
        original = self.log.get(shift_id)
        original.status = "undone"
        original.undone_by = record.id
        self.log.save(original)
        logger.info(
            "shift undone: %s by %s (%d tasks restored, %d left alone because a person "
            "changed them since)",
            original.id,
            record.id,
            len(reverse),
            skipped,
        )
        return record
