"""Background work of the backend: one coalesced "refresh" job per project.

Webhook events only call :func:`request_refresh`, which answers at once. The RQ
worker (``python -m ml_backend.worker``) runs :func:`refresh_project`: it waits until
the burst of events is over, then reads the project from Label Studio, computes the
missing features, sorts the tasks into folders (before any label) or trains the
classifier (after), and pushes one prediction per task in bulk.

Why not label-studio-ml's own job handling: version 1.0.9 forks one process per
webhook event when it runs without Redis, names jobs by the second (two events in one
second collide), queues at most one job and drops the rest, and ignores
``START_TRAINING``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
import redis
from rq import Queue
from threadpoolctl import threadpool_limits

from bulkshift.store import (
    BackendStore,
    Recommendation,
    connect,
    project_key,
    replace_hash,
)
from ml_backend import protocol, training
from ml_backend.config import Settings
from ml_backend.features import load_extractor, task_features
from ml_backend.images import ImageReader, LocalFiles
from ml_backend.labelstudio import LabelStudioError, LabelStudioGateway

logger = logging.getLogger(__name__)

CONNECTION_KEY = "bulkshift:backend:label-studio"
BACKEND_URL_KEY = "bulkshift:backend:url"
PENDING_TTL_SECONDS = 600
LOCK_TIMEOUT_SECONDS = 3600
WEBHOOK_WAIT_ATTEMPTS = 10
# A refresh waits at most this long for a shift of the bulk-shift service to finish
# writing (the service's own in-flight marks expire after 900 s).
SHIFT_WAIT_SECONDS = 900.0
SHIFT_POLL_SECONDS = 0.5


def pending_key(project: int) -> str:
    """Set while a refresh of the project waits in the queue (events coalesce on it)."""
    return project_key(project, "backend:refresh-pending")


def last_event_key(project: int) -> str:
    return project_key(project, "backend:last-event")


def progress_key(project: int) -> str:
    """``{"stage", "done", "total"}`` of the running refresh (for progress bars)."""
    return project_key(project, "backend:progress")


def refresh_lock_key(project: int) -> str:
    """Held while a refresh of the project runs."""
    return project_key(project, "backend:refresh-lock")


def fingerprint_key(project: int) -> str:
    """``{"fingerprint", "model_version"}`` of the inputs of the last pushed refresh."""
    return project_key(project, "backend:fingerprint")


def version_counter_key(project: int) -> str:
    return project_key(project, "backend:version-counter")


def predictions_key(project: int) -> str:
    """Hash task id -> the prediction last pushed for it (what ``/predict`` answers)."""
    return project_key(project, "backend:predictions")


def errors_key(project: int) -> str:
    """Hash task id -> why the task's image could not be read in the last refresh."""
    return project_key(project, "backend:errors")


# -- the Label Studio connection -------------------------------------------------------


def remember_connection(client: redis.Redis, url: str, token: str) -> None:
    """Keep the host and token Label Studio sent in ``/setup`` for the worker."""
    client.set(CONNECTION_KEY, json.dumps({"url": url.rstrip("/"), "token": token}))


def gateway_for(settings: Settings, client: redis.Redis) -> LabelStudioGateway | None:
    """A gateway with ``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY``, else the host and
    token from the last ``/setup``; None when neither is known."""
    if settings.api_key:
        return LabelStudioGateway(settings.label_studio_url, settings.api_key)
    raw = client.get(CONNECTION_KEY)
    if raw:
        known = json.loads(raw)
        return LabelStudioGateway(known["url"], known["token"])
    return None


# -- coalescing ----------------------------------------------------------------------


def request_refresh(
    client: redis.Redis, settings: Settings, project: int, reason: str
) -> bool:
    """Ask for a refresh of ``project``; return True if a new job was queued.

    Events arriving while a refresh waits in the queue only move its start later;
    an event arriving while a refresh runs queues exactly one more.
    """
    client.set(last_event_key(project), repr(time.time()))
    if not client.set(pending_key(project), reason, nx=True, ex=PENDING_TTL_SECONDS):
        logger.debug("project %d: %s joins the refresh already queued", project, reason)
        return False
    # Unique job ids: label-studio-ml's ids by the second collide within a burst.
    job_id = f"bulkshift-refresh-{project}-{uuid.uuid4().hex[:12]}"
    Queue(settings.queue_name, connection=client).enqueue(
        refresh_project,
        project,
        job_id=job_id,
        job_timeout=LOCK_TIMEOUT_SECONDS,
        result_ttl=24 * 3600,
        failure_ttl=24 * 3600,
    )
    logger.info("project %d: refresh queued (%s), job %s", project, reason, job_id)
    return True


def refresh_busy(client: redis.Redis, project: int) -> bool:
    """Whether a refresh of ``project`` waits in the queue or runs now."""
    return bool(client.exists(pending_key(project), refresh_lock_key(project)))


def _wait_for_quiet(client: redis.Redis, project: int, quiet_seconds: float) -> None:
    """Sleep until no event came for ``quiet_seconds`` (at most 10 times as long)."""
    deadline = time.monotonic() + 10 * quiet_seconds
    while time.monotonic() < deadline:
        raw = client.get(last_event_key(project))
        since = time.time() - float(raw) if raw else quiet_seconds
        if since >= quiet_seconds:
            return
        time.sleep(min(quiet_seconds - since, 0.2) + 0.01)


def refresh_project(project: int) -> dict:
    """The RQ job: refresh one project's features, folders or model, and predictions."""
    from rq import get_current_job

    settings = Settings.from_environment()
    job = get_current_job()
    client = job.connection if job is not None else connect()

    wait_for_shifts(client, project, settings.coalesce_seconds)

    with client.lock(refresh_lock_key(project), timeout=LOCK_TIMEOUT_SECONDS):
        # From here on, a new event queues a new refresh: this one may already have
        # read the project before that event's change.
        client.delete(pending_key(project))
        gateway = gateway_for(settings, client)
        if gateway is None:
            logger.error(
                "project %d: no Label Studio to read from: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the backend in Label Studio so that "
                "it calls /setup",
                project,
            )
            return {"status": "no-connection"}
        try:
            _authorize_webhooks(settings, client, gateway, project)
            return Refresher(settings, BackendStore(client), gateway).run(project)
        finally:
            gateway.close()


def wait_for_shifts(
    client: redis.Redis,
    project: int,
    quiet_seconds: float,
    max_seconds: float = SHIFT_WAIT_SECONDS,
) -> float:
    """Wait until events pause and no shift of the bulk-shift service is writing.

    While a shift (the naming of the folders, a bulk shift) writes its annotations,
    Label Studio's webhooks about them arrive; a model trained then would learn from
    a half-written state and count the machine's labels as a person's. The refresh
    stays queued meanwhile (the pending mark is kept, so new events still join it),
    for at most ``max_seconds``.

    Returns
    -------
    float
        Seconds spent waiting for shifts.
    """
    backend_store = BackendStore(client)
    deadline = time.monotonic() + max_seconds
    waited = 0.0
    announced = False
    while True:
        _wait_for_quiet(client, project, quiet_seconds)
        if not backend_store.shift_in_flight(project):
            return waited
        if time.monotonic() > deadline:
            logger.warning(
                "project %d: a shift has been writing for more than %.0f s; "
                "refreshing anyway",
                project,
                max_seconds,
            )
            return waited
        if not announced:
            logger.info(
                "project %d: the bulk-shift service is writing %d tasks; the refresh "
                "waits until it is done",
                project,
                backend_store.shift_in_flight(project),
            )
            announced = True
        client.set(pending_key(project), "waiting for a shift", ex=PENDING_TTL_SECONDS)
        started = time.monotonic()
        while backend_store.shift_in_flight(project) and time.monotonic() < deadline:
            time.sleep(SHIFT_POLL_SECONDS)
        waited += time.monotonic() - started


def _authorize_webhooks(settings, client, gateway, project: int) -> None:
    """With basic auth on, make the webhook Label Studio created for us send it.

    Label Studio creates that webhook just after its first ``/setup`` call, so the
    first refresh may run before it exists: wait a few seconds for it.
    """
    if settings.basic_auth is None:
        return
    raw = client.get(BACKEND_URL_KEY)
    if not raw:
        return
    for attempt in range(WEBHOOK_WAIT_ATTEMPTS):
        try:
            found, updated = gateway.authorize_backend_webhooks(
                project, raw.decode(), settings.basic_auth
            )
        except LabelStudioError as error:
            logger.warning(
                "project %d: webhook credentials not set: %s", project, error
            )
            return
        if updated:
            logger.info(
                "project %d: the backend's webhook now sends its credentials", project
            )
        if found:
            return
        time.sleep(0.5)
    logger.warning(
        "project %d: Label Studio has no webhook to %s/webhook; label events will not "
        "reach the backend until one exists (reconnect the model in the project's "
        "settings)",
        project,
        raw.decode(),
    )


# -- one refresh -----------------------------------------------------------------------


@dataclass
class RefreshOutcome:
    status: str
    model_version: str | None = None
    mode: str | None = None
    n_tasks: int = 0
    n_predictions: int = 0
    n_errors: int = 0
    n_computed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Refresher:
    """Reads a project, computes, pushes. See the module docstring.

    Parameters
    ----------
    settings : Settings
    store : BackendStore
    gateway : LabelStudioGateway or an object with the same methods
    """

    def __init__(self, settings: Settings, store: BackendStore, gateway):
        self.settings = settings
        self.store = store
        self.gateway = gateway

    def run(self, project: int) -> dict:
        started = time.monotonic()
        try:
            details = self.gateway.project(project)
            interface = protocol.parse_labeling_config(
                details.get("label_config") or ""
            )
        except (LabelStudioError, protocol.ProtocolError) as error:
            logger.error("project %d: refresh skipped: %s", project, error)
            return RefreshOutcome("skipped").as_dict()

        # Step 1: tasks, their images and their person labels.
        tasks = self.gateway.tasks(project)
        image_urls = {
            int(task["id"]): (task.get("data") or {}).get(interface.image_key)
            for task in tasks
        }
        annotated = {}
        for task in tasks:
            label = protocol.task_label(task, interface.choices_name)
            if label is not None:
                annotated[int(task["id"])] = label

        # Step 2: features (cached by content), one error per unreadable image.
        extractor = load_extractor(self.settings.extractor)
        reader = self._image_reader()
        features = task_features(
            project,
            image_urls,
            self.store,
            extractor,
            reader,
            self.settings.batch_size,
            progress=lambda stage, done, total: self._progress(
                project, stage, done, total
            ),
        )
        self._record_errors(project, features.errors)
        if reader.from_disk or reader.over_http:
            logger.info(
                "project %d: %d images read from disk, %d downloaded",
                project,
                reader.from_disk,
                reader.over_http,
            )
        if not features.task_ids:
            logger.warning(
                "project %d: no readable image among %d tasks; nothing to predict",
                project,
                len(tasks),
            )
            return RefreshOutcome(
                "empty", n_tasks=len(tasks), n_errors=len(features.errors)
            ).as_dict()

        # Step 3: folders before any label, the classifier after. Nothing is
        # recomputed when the inputs are those of the version Label Studio shows
        # (Label Studio calls /setup many times while the first refresh runs).
        n_featured = len(features.task_ids)
        service = self.store.service_labels(project)
        if annotated or service:
            self._progress(project, "training", n_featured, n_featured)
            inputs = self._label_inputs(
                project, interface, features, annotated, service
            )
            fingerprint = self._fingerprint("classifier", interface, features, inputs)
            if self._unchanged(project, fingerprint, details):
                return self._skip(project, tasks, features, started)
            outcome, predictions, used = self._rank(
                project, interface, features, inputs
            )
        else:
            self._progress(project, "sorting into folders", n_featured, n_featured)
            fingerprint = self._fingerprint("clusters", interface, features, None)
            if self._unchanged(project, fingerprint, details):
                return self._skip(project, tasks, features, started)
            outcome, predictions, used = self._sort_into_folders(
                project, interface, features
            )

        # Step 4: make the labels in use and the recommendations box part of the
        # config, then push the predictions and make their version the project's.
        self._progress(project, "pushing predictions", n_featured, n_featured)
        self._ensure_config(project, used)
        self._push(project, outcome.model_version, predictions)
        self.store.redis.set(
            fingerprint_key(project),
            json.dumps(
                {"fingerprint": fingerprint, "model_version": outcome.model_version}
            ),
        )
        self.store.redis.delete(progress_key(project))

        outcome.n_tasks = len(tasks)
        outcome.n_errors = len(features.errors)
        outcome.n_computed = features.computed
        outcome.seconds = round(time.monotonic() - started, 3)
        logger.info(
            "project %d: %s pushed %d predictions (%s, %d tasks, %d new feature "
            "vectors, %d unreadable images) in %.1f s",
            project,
            outcome.model_version,
            outcome.n_predictions,
            outcome.mode,
            outcome.n_tasks,
            outcome.n_computed,
            outcome.n_errors,
            outcome.seconds,
        )
        return outcome.as_dict()

    # -- nothing changed ------------------------------------------------------------

    def _fingerprint(self, mode, interface, features, inputs) -> str:
        """A hash of everything a refresh's predictions depend on."""
        digest = hashlib.sha256()
        settings = self.settings
        described = {
            "mode": mode,
            "extractor": features.extractor_id,
            "tasks": features.task_ids,
            "interface": [interface.image_name, interface.choices_name],
            "n_clusters": settings.n_clusters,
            "seed": settings.seed,
        }
        if inputs is not None:
            described.update(
                names=inputs.names,
                labels=inputs.labels.tolist(),
                confirmed=inputs.confirmed.tolist(),
                classifier=settings.classifier,
                uncertainty=settings.uncertainty,
                # Only the classifier's predictions carry the recommendations box.
                box=interface.has_recommendations,
            )
        digest.update(json.dumps(described, sort_keys=True).encode())
        digest.update(np.ascontiguousarray(features.features).tobytes())
        return digest.hexdigest()

    def _unchanged(self, project: int, fingerprint: str, details: dict) -> bool:
        raw = self.store.redis.get(fingerprint_key(project))
        if not raw:
            return False
        last = json.loads(raw)
        version = self.store.model_version(project)
        return (
            last.get("fingerprint") == fingerprint
            and last.get("model_version") == version
            and details.get("model_version") == version
        )

    def _skip(self, project, tasks, features, started) -> dict:
        self.store.redis.delete(progress_key(project))
        version = self.store.model_version(project)
        logger.info(
            "project %d: same tasks, features and labels as %s; nothing recomputed",
            project,
            version,
        )
        return RefreshOutcome(
            "unchanged",
            version,
            n_tasks=len(tasks),
            n_errors=len(features.errors),
            seconds=round(time.monotonic() - started, 3),
        ).as_dict()

    def _image_reader(self) -> ImageReader:
        root = self.settings.local_files_root
        local_files = None
        if root:
            known = self.store.redis.get(CONNECTION_KEY)
            setup_url = json.loads(known)["url"] if known else self.gateway.url
            local_files = LocalFiles(root, {self.gateway.url, setup_url})
        return ImageReader(
            self.gateway.fetch_image, local_files, self.settings.fetch_threads
        )

    def _progress(self, project: int, stage: str, done: int, total: int) -> None:
        value = json.dumps({"stage": stage, "done": done, "total": total})
        self.store.redis.set(progress_key(project), value, ex=PENDING_TTL_SECONDS)

    # -- steps ---------------------------------------------------------------------

    def _next_version(self, project: int, kind: str) -> str:
        number = self.store.redis.incr(version_counter_key(project))
        return f"bulkshift-{number:04d}-{kind}"

    def _sort_into_folders(self, project, interface, features):
        folders = training.sort_into_folders(
            features.task_ids,
            features.features,
            self.settings.n_clusters,
            random_state=self.settings.seed,
        )
        version = self._next_version(project, "clusters")
        self.store.set_clusters(project, version, folders.clusters)
        names = [cluster["name"] for cluster in folders.clusters]
        if not self.store.label_names(project):
            self.store.set_label_names(project, names)
        predictions = {
            task: protocol.prediction(
                interface, folders.label_of[task], folders.closeness[task], version
            )
            for task in features.task_ids
        }
        logger.info(
            "project %d: no label yet; %d tasks sorted into %d folders",
            project,
            len(features.task_ids),
            len(folders.clusters),
        )
        outcome = RefreshOutcome(
            "ok", version, "clusters", n_predictions=len(predictions)
        )
        return outcome, predictions, names

    def _label_inputs(self, project, interface, features, annotated, service):
        """Every task's current label index and whether a person set it."""
        stored = self.store.clusters(project)
        folders = training.folder_of(stored["clusters"] if stored else None)
        current = training.current_labels(
            features.task_ids, annotated, service, folders
        )
        # The labeling config's choices are the label set (the service writes the
        # named labels there); names still in use count too, a stored name that is
        # neither is dropped (the folders' "Cluster NN" after naming).
        stored_names = self.store.label_names(project)
        names = training.label_names(stored_names, interface.labels, current.values())
        if names != stored_names:
            self.store.set_label_names(project, names)
        index = {name: i for i, name in enumerate(names)}
        labels = np.array(
            [index.get(current.get(task), -1) for task in features.task_ids],
            dtype=int,
        )
        confirmed = training.person_confirmed(
            features.task_ids,
            annotated,
            self.store.person_confirmed(project),
            self.store.service_tracks_tasks(project),
        )
        return training.LabelInputs(
            names, labels, confirmed, sorted(set(current.values()))
        )

    def _rank(self, project, interface, features, inputs):
        names, labels, confirmed = inputs.names, inputs.labels, inputs.confirmed
        version = self._next_version(project, self.settings.classifier)
        # One BLAS thread: on a machine shared with Label Studio, several threads
        # fight for the cores and a 3,000-task fit takes 5 s instead of 1.
        with threadpool_limits(limits=1):
            ranking = training.train_and_rank(
                features.features,
                labels,
                len(names),
                self.settings.classifier,
                self.settings.uncertainty,
                random_state=self.settings.seed,
                confirmed=confirmed,
            )

        predictions, recommendations = {}, {}
        for row, task in enumerate(features.task_ids):
            recommended = [names[i] for i in ranking.recommended[row]]
            probabilities = [float(p) for p in ranking.recommended_probabilities[row]]
            recommendations[task] = Recommendation(recommended, probabilities, version)
            predictions[task] = protocol.prediction(
                interface,
                recommended[0],
                float(ranking.scores[row]),
                version,
                (recommended, probabilities),
            )
        self.store.set_recommendations(project, recommendations)
        logger.info(
            "project %d: %s trained on %d labeled tasks (%d by a person), %d labels",
            project,
            self.settings.classifier,
            int((labels >= 0).sum()),
            int(confirmed.sum()),
            len(names),
        )
        outcome = RefreshOutcome(
            "ok", version, "classifier", n_predictions=len(predictions)
        )
        return outcome, predictions, inputs.used

    def _ensure_config(self, project: int, used: list[str]) -> None:
        """Add the labels in use that the config lacks, and the recommendations box.

        The config is read again here, not taken from the start of the refresh: the
        service may have rewritten the choices meanwhile (naming), and writing back
        the old config would bring the removed folder names back.
        """
        try:
            label_config = self.gateway.project(project).get("label_config") or ""
            updated = protocol.with_labels_and_recommendations(label_config, used)
        except (LabelStudioError, protocol.ProtocolError) as error:
            logger.warning(
                "project %d: could not read the labeling config: %s", project, error
            )
            return
        if protocol.same_config(updated, label_config):
            return
        try:
            self.gateway.update_project(project, label_config=updated)
            logger.info(
                "project %d: labeling config now offers %d labels",
                project,
                len(protocol.parse_labeling_config(updated).labels),
            )
        except LabelStudioError as error:
            # The predictions still arrive; only the labels they name may not show.
            logger.warning(
                "project %d: could not update the labeling config: %s", project, error
            )

    def _push(self, project: int, version: str, predictions: dict[int, dict]) -> None:
        previous = self.store.model_version(project)
        self.gateway.import_predictions(
            project,
            [dict(prediction, task=task) for task, prediction in predictions.items()],
        )
        self.gateway.update_project(project, model_version=version)
        self.store.set_model_version(project, version)

        replace_hash(
            self.store.redis,
            predictions_key(project),
            {task: json.dumps(p) for task, p in predictions.items()},
        )

        if previous and previous != version:
            try:
                deleted = self.gateway.delete_model_version(project, previous)
                logger.debug(
                    "project %d: %d predictions of %s deleted",
                    project,
                    deleted,
                    previous,
                )
            except LabelStudioError as error:
                logger.warning(
                    "project %d: old predictions of %s stay: %s",
                    project,
                    previous,
                    error,
                )

    def _record_errors(self, project: int, errors: dict[int, str]) -> None:
        replace_hash(self.store.redis, errors_key(project), errors)
