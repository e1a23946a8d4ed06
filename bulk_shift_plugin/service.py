"""What the service does with a person's label: proposals, accepting, naming, undo.

The web layer (:mod:`bulk_shift_plugin.app`) and the webhook receiver call this class;
it keeps no state of its own beyond caches, so a restarted service continues from Redis.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from dataclasses import dataclass

import numpy as np
import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.errors import (
    BulkShiftServiceError,
    NamingBusyError,
    ShiftStateError,
    UnknownProposalError,
)
from bulk_shift_plugin.labelstudio import LabelStudioGateway
from bulk_shift_plugin.naming import naming_label_set, resolve_folder_names
from bulk_shift_plugin.shifts import ShiftApplier, StepHook
from bulk_shift_plugin.state import ProjectIndex, TaskState, TaskStore, decode, now_iso
from bulk_shift_plugin.transactions import ShiftLog, ShiftRecord
from bulkshift.core.proposals import STRATEGIES, propose_bulk_shift

logger = logging.getLogger(__name__)

SERVICE_RULE = "guarded-pool"


@dataclass(frozen=True)
class AutoApply:
    """Accept a proposal without review when it has at least ``min_size`` members and
    their mean confidence is at least ``min_confidence``. Still logged and undoable."""

    enabled: bool = False
    min_size: int = 20
    min_confidence: float = 0.9

    def accepts(self, proposal: dict) -> bool:
        if not self.enabled or len(proposal["members"]) < self.min_size:
            return False
        known = [c for c in proposal["confidence"] if c is not None]
        return bool(known) and float(np.mean(known)) >= self.min_confidence


class BulkShiftService:
    """Proposals after a person's move, and the batch updates that follow.

    Parameters
    ----------
    redis_client : redis.Redis
    gateway : LabelStudioGateway
    auto_apply : AutoApply
        The default for projects that set nothing on the review page.
    after_step : callable, optional
        Passed to :class:`ShiftApplier` (tests stop Label Studio mid-shift with it).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        gateway: LabelStudioGateway,
        auto_apply: AutoApply = AutoApply(),
        after_step: StepHook | None = None,
        chunk_size: int = 500,
        background_cleanup: bool = True,
    ):
        self.redis = redis_client
        self.gateway = gateway
        self.rule = STRATEGIES[SERVICE_RULE]
        self.tasks = TaskStore(redis_client)
        self.log = ShiftLog(redis_client)
        self.applier = ShiftApplier(
            redis_client,
            gateway,
            chunk_size=chunk_size,
            after_step=after_step,
            background_cleanup=background_cleanup,
        )
        self.default_auto_apply = auto_apply
        self._indexes: dict[int, ProjectIndex] = {}
        self._indexes_lock = threading.Lock()
        self.background: list[threading.Thread] = []
        self._naming_threads: dict[int, threading.Thread] = {}
        self._naming_lock = threading.Lock()

    # -- cached arrays -------------------------------------------------------------

    def index(self, project: int) -> ProjectIndex:
        """The project's arrays, brought up to date with Redis."""
        with self._indexes_lock:
            index = self._indexes.get(int(project))
            if index is None:
                index = self._indexes[int(project)] = ProjectIndex(self.redis, project)
        index.refresh()
        return index

    def known_projects(self) -> set[int]:
        """Projects with any bulk-shift state in Redis."""
        found = set()
        for key in self.redis.scan_iter(match=f"{keys.PREFIX}:project:*", count=500):
            parts = decode(key).split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                found.add(int(parts[2]))
        return found

    # -- a person's label ----------------------------------------------------------

    def person_labeled(
        self, project: int, task: int, label: str, annotation_id: int | None
    ) -> dict | None:
        """Record a person's label for ``task``; propose a bulk shift if it moved.

        Returns the stored proposal, or None when the label is not a move, or the rule
        finds nothing to follow it.
        """
        previous = self.tasks.get(project, task)
        self.tasks.set(
            project,
            task,
            TaskState(
                label=label, origin="person", annotation_id=annotation_id, at=now_iso()
            ),
        )
        if previous is None or previous.label == label:
            logger.info(
                "project %s: task %s confirmed as %r by a person", project, task, label
            )
            return None
        if previous.shift_id is not None and previous.origin in ("shift", "cluster"):
            self.log.record_correction(previous.shift_id, task)
        logger.info(
            "project %s: a person moved task %s from %r to %r",
            project,
            task,
            previous.label,
            label,
        )
        return self.propose(project, task, previous.label, label)

    def propose(
        self, project: int, seed_task: int, source: str, destination: str
    ) -> dict | None:
        """Run the service's rule for the seed's move and store the proposal."""
        index = self.index(project)
        with index.lock:
            task_ids, labels, confirmed, recommendations, probabilities = index.arrays()
            seed = index.row_of.get(int(seed_task))
            source_index = index.index_of(source)
            destination_index = index.index_of(destination)
            if seed is None or source_index < 0 or destination_index < 0:
                logger.info(
                    "project %s: no proposal for task %s (%r -> %r): no "
                    "recommendations "
                    "or labels for it yet",
                    project,
                    seed_task,
                    source,
                    destination,
                )
                return None
            proposal = propose_bulk_shift(
                seed,
                source_index,
                destination_index,
                labels,
                recommendations,
                self.rule,
                confirmed=confirmed,
                recommendation_probabilities=probabilities,
            )
            if proposal is None:
                logger.info(
                    "project %s: no proposal after task %s moved %r -> %r",
                    project,
                    seed_task,
                    source,
                    destination,
                )
                return None
            members = [int(task) for task in task_ids[proposal.members]]
            confidence = [
                None if math.isnan(value) else round(float(value), 6)
                for value in proposal.confidence
            ]

        record = {
            "id": uuid.uuid4().hex[:12],
            "project": int(project),
            "seed_task": int(seed_task),
            "source": source,
            "destination": destination,
            "rank": int(proposal.rank),
            "members": members,
            "confidence": confidence,
            "model_version": decode(self.redis.get(keys.model_version(project))),
            "created_at": now_iso(),
        }
        replaced = self._store_proposal(project, record)
        logger.info(
            "project %s: proposal %s from %r to %r of %d tasks "
            "(rank %d, seed task %s)%s",
            project,
            record["id"],
            source,
            destination,
            len(members),
            proposal.rank + 1,
            seed_task,
            f"; replaces {', '.join(replaced)}" if replaced else "",
        )
        if self.auto_apply(project).accepts(record):
            thread = threading.Thread(
                target=self._auto_accept, args=(project, record["id"]), daemon=True
            )
            self.background.append(thread)
            thread.start()
        return record

    def _store_proposal(self, project: int, record: dict) -> list[str]:
        """Store ``record`` in place of the pending proposals on its route.

        The rule searches the whole pool, so a newer proposal on the same (source,
        destination, rank) already holds every member an older one still could move:
        two cards for one route would only make a person review the same images
        twice. Returns the ids replaced.
        """
        route = (record["source"], record["destination"], record["rank"])
        key = keys.proposals(project)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    older = [
                        pending["id"]
                        for pending in map(json.loads, pipe.hvals(key))
                        if (pending["source"], pending["destination"], pending["rank"])
                        == route
                    ]
                    pipe.multi()
                    if older:
                        pipe.hdel(key, *older)
                    pipe.hset(key, record["id"], json.dumps(record))
                    pipe.execute()
                    return older
                except redis.WatchError:
                    continue

    def _auto_accept(self, project: int, proposal_id: str) -> None:
        try:
            record = self.accept(project, proposal_id, auto=True)
            logger.info(
                "project %s: auto-applied proposal %s as shift %s",
                project,
                proposal_id,
                record.id,
            )
        except Exception:
            logger.exception(
                "project %s: auto-apply of %s failed", project, proposal_id
            )

    # -- proposals -----------------------------------------------------------------

    def proposals(self, project: int) -> list[dict]:
        """Pending proposals, oldest first."""
        raw = self.redis.hgetall(keys.proposals(project))
        found = [json.loads(value) for value in raw.values()]
        return sorted(found, key=lambda p: (p["created_at"], p["id"]))

    def proposal(self, project: int, proposal_id: str) -> dict:
        raw = self.redis.hget(keys.proposals(project), proposal_id)
        if raw is None:
            raise UnknownProposalError(
                f"no pending proposal {proposal_id!r} in project {project}; it was "
                "accepted or rejected already, or a newer proposal on the same route "
                "replaced it. Reload the review page"
            )
        return json.loads(raw)

    def reject(self, project: int, proposal_id: str) -> dict:
        proposal = self.proposal(project, proposal_id)
        self.redis.hdel(keys.proposals(project), proposal_id)
        logger.info(
            "project %s: proposal %s (%r -> %r, %d tasks) rejected",
            project,
            proposal_id,
            proposal["source"],
            proposal["destination"],
            len(proposal["members"]),
        )
        return proposal

    def accept(
        self,
        project: int,
        proposal_id: str,
        excluded: set[int] | frozenset[int] = frozenset(),
        auto: bool = False,
    ) -> ShiftRecord:
        """Apply a proposal minus the unticked ``excluded`` tasks as one shift.

        Members that changed since the proposal (no longer in the source label, or
        confirmed by a person meanwhile) are left out: the machine never changes a
        person's label.
        """
        proposal = self.proposal(project, proposal_id)
        if not self.redis.hdel(keys.proposals(project), proposal_id):
            raise UnknownProposalError(
                f"proposal {proposal_id!r} was accepted or rejected meanwhile"
            )
        excluded = {int(task) for task in excluded}
        wanted = [t for t in proposal["members"] if t not in excluded]
        states = self.tasks.get_many(project, wanted)
        members = [
            task
            for task in wanted
            if task in states
            and states[task].label == proposal["source"]
            and not states[task].confirmed
        ]
        if len(members) < len(wanted):
            logger.info(
                "project %s: %d members of proposal %s changed since it was made; "
                "left out",
                project,
                len(wanted) - len(members),
                proposal_id,
            )
        if not members:
            raise ShiftStateError(
                f"proposal {proposal_id} has no member left to move (all unticked or "
                "changed since)"
            )
        record = self.applier.record(
            project,
            "shift",
            {task: proposal["destination"] for task in members},
            origin="shift",
            source=proposal["source"],
            destination=proposal["destination"],
            seed_task=proposal["seed_task"],
            proposal_id=proposal_id,
            rank=proposal["rank"],
            auto_applied=auto,
        )
        logger.info(
            "project %s: proposal %s accepted as shift %s (%d tasks, %d unticked)%s",
            project,
            proposal_id,
            record.id,
            len(members),
            len(excluded & set(proposal["members"])),
            " automatically" if auto else "",
        )
        return self.applier.apply(record)

    # -- auto-apply settings -------------------------------------------------------

    def auto_apply(self, project: int) -> AutoApply:
        raw = self.redis.hget(keys.settings(project), "auto_apply")
        if raw is None:
            return self.default_auto_apply
        return AutoApply(**json.loads(raw))

    def set_auto_apply(self, project: int, setting: AutoApply) -> None:
        self.redis.hset(
            keys.settings(project),
            "auto_apply",
            json.dumps(
                {
                    "enabled": setting.enabled,
                    "min_size": setting.min_size,
                    "min_confidence": setting.min_confidence,
                }
            ),
        )
        logger.info("project %s: auto-apply set to %s", project, setting)

    # -- shifts --------------------------------------------------------------------

    def shifts(self, project: int) -> list[ShiftRecord]:
        return self.log.list(project)

    def undo(self, shift_id: str) -> ShiftRecord:
        return self.applier.undo(shift_id)

    def retry(self, shift_id: str) -> ShiftRecord:
        return self.applier.retry(shift_id)

    # -- cluster naming ------------------------------------------------------------

    def clusters(self, project: int) -> list[dict]:
        raw = self.redis.get(keys.clusters(project))
        return json.loads(raw)["clusters"] if raw else []

    def folder_names(self, project: int) -> dict[str, str]:
        """The names given to the folders so far: cluster number (text) -> label."""
        raw = self.redis.hget(keys.settings(project), "folder_names")
        return json.loads(raw) if raw else {}

    def label_names(self, project: int) -> list[str]:
        raw = self.redis.get(keys.labels(project))
        return json.loads(raw) if raw else []

    def naming_status(self, project: int) -> dict | None:
        """The last naming of ``project``: status, stage, progress and outcome.

        ``status`` is ``running``, ``done``, ``failed`` or ``interrupted`` (the
        service stopped while it ran).
        """
        raw = self.redis.hget(keys.settings(project), "naming")
        if raw is None:
            return None
        status = json.loads(raw)
        thread = self._naming_threads.get(int(project))
        if status["status"] == "running" and (thread is None or not thread.is_alive()):
            status["status"] = "interrupted"
            status["error"] = (
                "the service stopped while naming; submit the names again (tasks "
                "that have their folder's label already are skipped)"
            )
        return status

    def _save_naming_status(self, project: int, status: dict) -> None:
        self.redis.hset(keys.settings(project), "naming", json.dumps(status))

    def start_naming(self, project: int, choices: dict[int, str]) -> dict:
        """Check the names, then name the folders in a background thread.

        Returns the naming status (``running``); follow it with
        :meth:`naming_status`. Invalid names raise :class:`NamingError` at once,
        before anything changes.
        """
        project = int(project)
        names = resolve_folder_names(
            self.clusters(project), choices, self.folder_names(project)
        )
        with self._naming_lock:
            thread = self._naming_threads.get(project)
            if thread is not None and thread.is_alive():
                raise NamingBusyError(
                    f"the folders of project {project} are being named already; "
                    "wait for it to finish (the progress page shows it), then submit "
                    "again"
                )
            status = {
                "status": "running",
                "stage": "checking",
                "done": 0,
                "total": 0,
                "folders": len(names),
                "labels": sorted(set(names.values())),
                "shift_id": None,
                "moved": 0,
                "error": None,
                "started_at": now_iso(),
                "finished_at": None,
            }
            self._save_naming_status(project, status)
            thread = threading.Thread(
                target=self._run_naming, args=(project, names, status), daemon=True
            )
            self._naming_threads[project] = thread
            thread.start()
        return status

    def _run_naming(self, project: int, names: dict[int, str], status: dict) -> None:
        def stage(name: str, **values) -> None:
            status.update(stage=name, **values)
            self._save_naming_status(project, status)

        def progress(n_tasks: int) -> None:
            status["done"] += n_tasks
            self._save_naming_status(project, status)

        try:
            record = self.name_clusters(project, names, stage=stage, progress=progress)
        except Exception as error:
            if isinstance(error, BulkShiftServiceError):
                status["error"] = str(error)
            else:
                logger.exception("project %s: naming failed", project)
                status["error"] = (
                    f"naming failed ({type(error).__name__}); see the service's log"
                )
            status.update(status="failed", finished_at=now_iso())
            self._save_naming_status(project, status)
            return
        status.update(
            status="done",
            stage="done",
            shift_id=record.id if record else None,
            moved=len(record.moves) if record else 0,
            finished_at=now_iso(),
        )
        self._save_naming_status(project, status)

    def name_clusters(
        self,
        project: int,
        names: dict[int, str],
        stage=None,
        progress=None,
    ) -> ShiftRecord | None:
        """Name the k-means folders and give their tasks the folder's label.

        ``names`` maps a folder number to a label name, or to a merge into another
        folder (see :func:`resolve_folder_names`); folders with the same final name
        are merged. Unnamed folders are left as they are. Tasks a person confirmed,
        and tasks a shift moved to another label, keep their label.

        The labeling config's choices become the folder names plus the labels a
        person added (the folders' own "Cluster NN" names go), and so does
        ``bulkshift:project:P:labels``. The config is widened first and narrowed
        after the moves, because Label Studio refuses a config without a label that
        annotations still use.
        """
        stage = stage or (lambda name, **values: None)
        clusters = self.clusters(project)
        previous = self.folder_names(project)
        names = resolve_folder_names(clusters, names, previous)
        cluster_names = {cluster["name"] for cluster in clusters}
        folder_names = {int(number): name for number, name in previous.items()}
        folder_names.update(names)

        # Which tasks get their folder's name: no label yet, a label from an earlier
        # naming or the backend's folder, or the folder's old name. Not a person's,
        # and not one a shift or the CLI chose.
        states = self.tasks.all(project)
        targets: dict[int, str] = {}
        for cluster in clusters:
            number = int(cluster["cluster"])
            name = names.get(number)
            if name is None:
                continue
            old_name = previous.get(str(number))
            for task in map(int, cluster["tasks"]):
                state = states.get(task)
                if state is None:
                    targets[task] = name
                elif state.confirmed or state.label == name:
                    continue
                elif (
                    state.origin == "cluster"
                    or state.label in cluster_names
                    or state.label == old_name
                ):
                    targets[task] = name
        in_use = {state.label for task, state in states.items() if task not in targets}
        retired = set(previous.values()) - set(folder_names.values())

        stage("labels")
        configured = self.gateway.choices_control(project, refresh=True).labels
        final = naming_label_set(
            configured, folder_names, cluster_names, retired, in_use
        )
        widened = final + [name for name in configured if name not in final]
        if widened != configured:
            self.gateway.set_label_names(project, widened)
        self.redis.hset(
            keys.settings(project),
            "folder_names",
            json.dumps({str(n): name for n, name in sorted(folder_names.items())}),
        )
        logger.info(
            "project %s: %d folders named (%d labels); "
            "%d tasks get their folder's label",
            project,
            len(names),
            len(set(names.values())),
            len(targets),
        )

        record = None
        if targets:
            stage("applying", total=len(targets), done=0)
            record = self.applier.record(project, "naming", targets, origin="cluster")
            record = self.applier.apply(record, progress=progress)

        stage("labels")
        if final != widened:
            self.gateway.set_label_names(project, final)
        self.redis.set(keys.labels(project), json.dumps(final))
        logger.info(
            "project %s: labels after naming: %d (%d folder names)",
            project,
            len(final),
            len(set(folder_names.values())),
        )
        return record

    # -- registration --------------------------------------------------------------

    def register(self, project: int, public_url: str, secret: str) -> int:
        """Register the webhook and link the review page from the project."""
        public_url = public_url.rstrip("/")
        hook = self.gateway.register_webhook(project, f"{public_url}/webhook", secret)
        self.redis.hset(keys.settings(project), "webhook_id", hook)
        review = f"{public_url}/projects/{int(project)}/review"
        self.gateway.link_review_page(project, review)
        return hook
