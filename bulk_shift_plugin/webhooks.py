"""Label Studio webhooks: the secret check, de-duplication and what each event means.

Label Studio sends the header the service registered (``X-Bulkshift-Secret``); a
request without it, or with another value, is refused before its body is read. Each
event's fingerprint (a hash of its canonical JSON body) goes into
``bulkshift:events:seen``; an event seen before is acknowledged and ignored, so a
replayed or duplicated delivery is applied once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass

import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.errors import WebhookPayloadError, WebhookSecretError
from bulk_shift_plugin.labelstudio import SECRET_HEADER, choice_of
from bulk_shift_plugin.service import BulkShiftService
from bulk_shift_plugin.state import TaskState, now_iso

logger = logging.getLogger(__name__)

SINGLE_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def check_secret(headers, expected: str) -> None:
    """Raise :class:`WebhookSecretError` unless ``headers`` carry ``expected``."""
    given = headers.get(SECRET_HEADER) or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebhookSecretError("missing or wrong webhook secret")


def fingerprint(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What the receiver did with an event (for the HTTP answer and tests)."""

    action: str
    result: str
    proposal_id: str | None = None


class WebhookReceiver:
    """Apply Label Studio events to the service, each at most once."""

    def __init__(self, service: BulkShiftService, redis_client: redis.Redis):
        self.service = service
        self.redis = redis_client

    def receive(self, body: bytes, headers, secret: str) -> Outcome:
        check_secret(headers, secret)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookPayloadError("the webhook body is not JSON") from None
        if not isinstance(payload, dict) or "action" not in payload:
            raise WebhookPayloadError("the webhook body has no 'action'")

        event = fingerprint(payload)
        if not self.redis.sadd(keys.EVENTS_SEEN, event):
            logger.info("webhook %s already applied; ignored", payload["action"])
            return Outcome(payload["action"], "duplicate")
        try:
            return self._dispatch(payload)
        except Exception:
            # Not applied after all: a redelivery may try again.
            self.redis.srem(keys.EVENTS_SEEN, event)
            raise

    def _dispatch(self, payload: dict) -> Outcome:
        action = payload["action"]
        if action in SINGLE_ACTIONS:
            return self._single(payload)
        if action == "ANNOTATIONS_CREATED":
            return self._bulk_created(payload)
        if action == "ANNOTATIONS_DELETED":
            return self._bulk_deleted(payload)
        return Outcome(action, "ignored")

    @staticmethod
    def _project(payload: dict) -> int:
        project = payload.get("project")
        if isinstance(project, dict):
            project = project.get("id")
        if project is None:
            raise WebhookPayloadError("the webhook body names no project")
        return int(project)

    def _in_flight(self, project: int, task_ids: list[int]) -> set[int]:
        if not task_ids:
            return set()
        flags = self.redis.smismember(keys.in_flight(project), task_ids)
        return {task for task, flag in zip(task_ids, flags) if flag}

    def _single(self, payload: dict) -> Outcome:
        action = payload["action"]
        annotation = payload.get("annotation") or {}
        project = self._project(payload)
        task = annotation.get("task") or (payload.get("task") or {}).get("id")
        if task is None:
            raise WebhookPayloadError(f"{action} names no task")
        task = int(task)
        if self._in_flight(project, [task]):
            return Outcome(action, "own write")
        if annotation.get("was_cancelled"):
            return Outcome(action, "skipped task")
        control = self.service.gateway.choices_control(project)
        label = choice_of(annotation.get("result"), control.from_name)
        if label is None:
            return Outcome(action, "no label")
        proposal = self.service.person_labeled(
            project, task, label, annotation.get("id")
        )
        return Outcome(action, "recorded", proposal["id"] if proposal else None)

    def _bulk_created(self, payload: dict) -> Outcome:
        project = self._project(payload)
        annotations = payload.get("annotation") or payload.get("annotations") or []
        by_task = {int(a["task"]): a for a in annotations if a.get("task") is not None}
        ours = self._in_flight(project, list(by_task))
        control = self.service.gateway.choices_control(project)
        known = self.service.tasks.get_many(project, list(by_task))
        states = {}
        for task, annotation in by_task.items():
            label = choice_of(annotation.get("result"), control.from_name)
            if task in ours or label is None:
                continue
            state = known.get(task)
            if (
                state is not None
                and annotation.get("id") is not None
                and state.annotation_id == annotation.get("id")
            ):
                # Our own write, delivered after the shift finished: the state the
                # shift wrote (with its shift id, for purity and undo) stays.
                continue
            # Bulk-created annotations come from predictions, not a person's look at
            # each task: a machine label.
            states[task] = TaskState(
                label=label,
                origin="model",
                annotation_id=annotation.get("id"),
                at=now_iso(),
            )
        self.service.tasks.set_many(project, states)
        return Outcome("ANNOTATIONS_CREATED", f"recorded {len(states)}")

    def _bulk_deleted(self, payload: dict) -> Outcome:
        project = self._project(payload)
        deleted = {
            int(a["id"] if isinstance(a, dict) else a)
            for a in (payload.get("annotation") or payload.get("annotations") or [])
        }
        if not deleted:
            return Outcome("ANNOTATIONS_DELETED", "nothing")
        states = self.service.tasks.all(project)
        affected = [t for t, s in states.items() if s.annotation_id in deleted]
        ours = self._in_flight(project, affected)
        folder_names = self.service.folder_names(project)
        folder_of = {
            int(task): folder_names.get(str(cluster["cluster"]))
            for cluster in self.service.clusters(project)
            for task in cluster["tasks"]
        }
        fallback, removed = {}, []
        for task in affected:
            if task in ours:
                continue
            # Without an annotation a task's current label is its folder's name.
            name = folder_of.get(task)
            state = states[task]
            if (
                state.shift_id is not None
                and state.origin in ("shift", "cluster")
                and name != state.label
            ):
                # A person deleted the label a shift gave: the shift was wrong there.
                self.service.log.record_correction(state.shift_id, task)
            if name is not None:
                fallback[task] = TaskState(label=name, origin="cluster", at=now_iso())
            else:
                removed.append(task)
        self.service.tasks.set_many(project, fallback, removed=removed)
        return Outcome(
            "ANNOTATIONS_DELETED",
            f"{len(fallback)} back to folder, {len(removed)} unlabeled",
        )
