"""``python -m bulkshift.stack.run up|down|status``: the whole stack in one command.

``up`` starts Redis (embedded unless ``REDIS_URL`` is set), Label Studio, the ML
backend and its worker, and the bulk-shift service as background processes; creates a
project on an image folder (or on a Fashion-MNIST sample), registers local storage,
connects the backend and the service's webhooks, waits with a progress bar until the
folder pre-annotations are in Label Studio, and prints where to go next. Running it
again reuses every part that exists: the processes still running, the project, its
storage, the backend connection and the cached features.

What runs where is recorded in ``<data dir>/stack.json`` (PIDs, ports, projects), the
logs are in ``<data dir>/logs/``; ``down`` stops the recorded processes by PID.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from bulkshift.stack.processes import (
    LOCALHOST,
    StackError,
    port_in_use,
    spawn,
    wait_until,
)
from ml_backend.protocol import FIRST_FOLDER_NAME

logger = logging.getLogger(__name__)

STATE_FILE = "stack.json"
SECRET_FILE = "webhook-secret"
LOG_DIR = "logs"
DEFAULT_SAMPLE_SIZE = 3000
DEFAULT_PORTS = {"label_studio": 8080, "backend": 9090, "plugin": 9095}
PORT_ENV = {
    "label_studio": "BULKSHIFT_LS_PORT",
    "backend": "BULKSHIFT_BACKEND_PORT",
    "plugin": "BULKSHIFT_PLUGIN_PORT",
    "redis": "BULKSHIFT_REDIS_PORT",
}
# Stopped in this order; started in the reverse one.
SERVICES = ("plugin", "worker", "backend", "label_studio", "redis")
IMAGE_REGEX = r"(?i).*\.(png|jpe?g|gif|bmp|webp|tiff?)$"
SYNC_ATTEMPTS = 4
SYNC_BACKOFF_SECONDS = 2.0
PORT_RELEASE_SECONDS = 20.0
UNREADABLE_SHOWN = 5
BACKEND_TITLE = "Bulk Shift"

# Label Studio refuses a <Choices> without a <Choice>: offer the backend's first
# folder name, the one option that is never a stray label (the backend appends the
# other folders' names to the config).
LABEL_CONFIG = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="label" toName="image" choice="single" showInline="true">
    <Choice value="{FIRST_FOLDER_NAME}"/>
  </Choices>
</View>
"""


class RunError(RuntimeError):
    """A step of ``up``/``down`` failed; the message says what to do."""


# -- output --------------------------------------------------------------------------


class Console:
    """Step lines with their duration, on stdout; secrets never pass through here."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.timings: list[tuple[str, float]] = []
        self._step_started = None
        self._step_name = None

    def say(self, message: str = "") -> None:
        print(message, file=self.stream, flush=True)

    def step(self, name: str) -> Self:
        self._step_name = name
        return self

    def __enter__(self) -> Self:
        self._step_started = time.monotonic()
        self.say(f"==> {self._step_name}")
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        seconds = time.monotonic() - self._step_started
        if exc_type is None:
            self.timings.append((self._step_name, seconds))
            self.say(f"    done in {seconds:.1f} s")

    def timing_table(self) -> None:
        width = max(len(name) for name, _ in self.timings)
        self.say("Time per step:")
        for name, seconds in self.timings:
            self.say(f"  {name:<{width}}  {seconds:7.1f} s")
        total = sum(seconds for _, seconds in self.timings)
        self.say(f"  {'total':<{width}}  {total:7.1f} s")


# -- recorded state ------------------------------------------------------------------


@dataclass
class StackState:
    """``<data dir>/stack.json``: the processes started and the projects created."""

    path: Path
    services: dict = field(default_factory=dict)
    projects: dict = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> StackState:
        path = data_dir / STATE_FILE
        if not path.exists():
            return cls(path)
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunError(
                f"{path} is not valid JSON ({error}); stop the processes it lists by "
                "hand, then delete it"
            ) from None
        return cls(path, content.get("services", {}), content.get("projects", {}))

    def save(self) -> None:
        content = {"services": self.services, "projects": self.projects}
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(content, indent=2, sort_keys=True))
        temporary.replace(self.path)

    def record(self, name: str, pid: int | None, **details) -> None:
        entry = {"pid": pid, "start_time": process_start_time(pid) if pid else None}
        entry.update(details)
        self.services[name] = entry
        self.save()

    def running(self, name: str) -> dict | None:
        """The recorded entry of ``name`` if that very process is still alive."""
        entry = self.services.get(name)
        if not entry or not entry.get("pid"):
            return None
        if process_start_time(entry["pid"]) != entry.get("start_time"):
            return None
        return entry


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone.

    Recorded with each PID so that a PID the system reused for another process is
    never mistaken for ours (and never signalled).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing bracket.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def stop_recorded(entry: dict, what: str, timeout: float = 20.0) -> bool:
    """SIGTERM the process group of a recorded service, SIGKILL it if it lingers.

    Every service was started in its own session, so its process group id is its PID
    and the signal reaches the helpers it forked, and nothing else.

    Returns
    -------
    bool
        True if a running process was stopped, False if it was already gone.
    """
    pid = entry.get("pid")
    if not pid or process_start_time(pid) != entry.get("start_time"):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_start_time(pid) is None:
            return True
        time.sleep(0.2)
    logger.warning(
        "%s (pid %d) ignored SIGTERM for %.0f s; killing it", what, pid, timeout
    )
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


# -- secrets -------------------------------------------------------------------------


def webhook_secret(data_dir: Path) -> str:
    """The shared secret of the service's webhooks, generated once (file mode 600)."""
    path = data_dir / SECRET_FILE
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_hex(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret


# -- configuration -------------------------------------------------------------------


@dataclass
class UpOptions:
    """What ``up`` was asked for, after flags and environment were combined."""

    data_dir: Path
    image_dir: Path | None
    ports: dict[str, int | None]
    redis_url: str | None
    vgg16_weights: Path | None
    sample_size: int
    timeout: float
    title: str | None = None


def _port(value: int | None, service: str, recorded: dict) -> int | None:
    if value is not None:
        return value
    from_environment = os.environ.get(PORT_ENV[service])
    if from_environment:
        try:
            return int(from_environment)
        except ValueError:
            raise RunError(
                f"{PORT_ENV[service]}={from_environment!r} is not a port number"
            ) from None
    if recorded.get(service, {}).get("port"):
        return int(recorded[service]["port"])
    return DEFAULT_PORTS.get(service)


def data_dir_of(arguments: argparse.Namespace) -> Path:
    return Path(
        arguments.data_dir or os.environ.get("BULKSHIFT_DATA_DIR") or "./var"
    ).resolve()


# -- the steps of "up" ---------------------------------------------------------------


class Stack:
    """Starts or finds each service and records it; see the module docstring."""

    def __init__(self, options: UpOptions, console: Console):
        self.options = options
        self.console = console
        self.data_dir = options.data_dir
        self.log_dir = self.data_dir / LOG_DIR
        self.state = StackState.load(self.data_dir)
        self.redis_url: str | None = None
        self.label_studio = None
        self.client = None
        self.extractor_environment: dict[str, str] = {}
        self.extractor_changed = False

    # Redis

    def start_redis(self) -> str:
        from bulkshift.stack.redis_server import RedisServer

        if self.options.redis_url:
            self.redis_url = self.options.redis_url
            self._ping_redis()
            self.console.say("    using REDIS_URL (not started here)")
            self.state.services.pop("redis", None)
            self.state.save()
            return "external"

        running = self.state.running("redis")
        if running:
            self.redis_url = running["url"]
            self._ping_redis()
            self.console.say(
                f"    already running: {self.redis_url} (pid {running['pid']})"
            )
            return "reused"

        directory = self.data_dir / "redis"
        port = _port(self.options.ports.get("redis"), "redis", self.state.services)
        server = RedisServer(directory, port=port, persist=True).start()
        self.redis_url = server.url
        self.state.record(
            "redis",
            server.pid,
            port=server.port,
            url=server.url,
            log=str(server.log_path),
        )
        # The files bulkshift.store looks for, so that a backend started by hand with
        # the same BULKSHIFT_DATA_DIR finds this server instead of starting another.
        (directory / "redis.port").write_text(str(server.port))
        (directory / "redis.pid").write_text(str(server.pid))
        self._link_log("redis.log", server.log_path)
        self.console.say(
            f"    started {self.redis_url} (pid {server.pid}, snapshots in {directory})"
        )
        server.detach()  # down stops it by PID
        return "started"

    def _ping_redis(self) -> None:
        import redis

        try:
            redis.Redis.from_url(self.redis_url, socket_timeout=3).ping()
        except redis.RedisError as error:
            raise RunError(
                f"Redis at {_without_password(self.redis_url)} does not answer "
                f"({type(error).__name__}); "
                "start it, or unset REDIS_URL to use an embedded one"
            ) from None

    # Label Studio

    def start_label_studio(self) -> str:
        from bulkshift.stack.labelstudio import LabelStudioServer

        running = self.state.running("label_studio")
        if running:
            server = LabelStudioServer(self.data_dir, port=running["port"])
            if server.is_healthy():
                self._connect_label_studio(server)
                asked = self.options.ports.get("label_studio")
                if asked and asked != server.port:
                    self.console.say(
                        f"    note: Label Studio already runs on port {server.port}; "
                        f"run down first to move it to {asked}"
                    )
                self.console.say(
                    f"    already running: {server.url} (pid {running['pid']})"
                )
                return "reused"
            raise RunError(
                f"Label Studio (pid {running['pid']}) is running but "
                f"{server.url}/health "
                f"does not answer; see {self.log_dir / 'label-studio.log'}, or run "
                "down and up again"
            )

        port = _port(
            self.options.ports.get("label_studio"), "label_studio", self.state.services
        )
        server = LabelStudioServer(self.data_dir, port=port)
        first = not (server.base_data_dir / "label_studio.sqlite3").exists()
        self.console.say(
            f"    starting on {server.url} "
            + ("(new database: about a minute)" if first else "(existing database)")
        )
        server.start(timeout=self.options.timeout)
        self.state.record(
            "label_studio",
            server.pid,
            port=server.port,
            url=server.url,
            log=str(server.log_path),
        )
        # The server outlives this command on purpose; down stops it by PID.
        server.detach()
        self._link_log("label-studio.log", server.log_path)
        self._connect_label_studio(server)
        if first:
            # Neither the password nor the API token is ever printed: a terminal's
            # output ends up in logs and screenshots.
            self.console.say(
                f"    account {server.username} created; its password is in "
                f"{server.credentials_path}"
            )
        return "started"

    def _connect_label_studio(self, server) -> None:
        from label_studio_sdk import LabelStudio

        self.label_studio = server
        self.client = LabelStudio(
            base_url=server.url, api_key=server.token, timeout=120
        )

    # features

    def choose_extractor(self) -> str:
        """Decide VGG16 or pixels for the backend, and say so in one line."""
        from bulkshift.features.extractors import (
            WEIGHTS_ENV,
            WeightsUnavailableError,
            resolve_vgg16_weights,
        )

        weights = self.options.vgg16_weights
        if weights is not None:
            if not weights.is_file():
                raise RunError(
                    f"--vgg16-weights {weights}: no such file; give the path of "
                    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
                )
            self.extractor_environment = {
                "BULKSHIFT_EXTRACTOR": "vgg16",
                WEIGHTS_ENV: str(weights.resolve()),
            }
            return f"VGG16 with the weights file {weights}"

        if (os.environ.get("BULKSHIFT_EXTRACTOR") or "vgg16") == "pixels":
            self.extractor_environment = {"BULKSHIFT_EXTRACTOR": "pixels"}
            return "pixels (BULKSHIFT_EXTRACTOR=pixels)"
        try:
            resolved = resolve_vgg16_weights("default")
        except WeightsUnavailableError:
            self.extractor_environment = {"BULKSHIFT_EXTRACTOR": "pixels"}
            return (
                "No ImageNet weights for VGG16 here (not in Keras' cache, downloads "
                "off): using the pixels extractor; pass --vgg16-weights PATH for VGG16."
            )
        self.extractor_environment = {"BULKSHIFT_EXTRACTOR": "vgg16"}
        return f"VGG16 ({resolved.tag})"

    # ML backend and worker

    def _service_environment(self) -> dict[str, str]:
        # Contains the API token and the secret: never logged or printed.
        return {
            "REDIS_URL": self.redis_url,
            "LABEL_STUDIO_URL": self.label_studio.url,
            "LABEL_STUDIO_API_KEY": self.label_studio.token,
            "BULKSHIFT_DATA_DIR": str(self.data_dir),
            **self._backend_environment(),
        }

    def _backend_environment(self) -> dict[str, str]:
        """What the backend and worker were started with that a later run may change;
        recorded in ``stack.json`` (no secret in it)."""
        return {
            # The backend reads Label Studio's local files straight from disk.
            "LOCAL_FILES_DOCUMENT_ROOT": str(self.label_studio.document_root),
            **self.extractor_environment,
        }

    def start_backend(self) -> str:
        from bulkshift.stack.backend import BackendServer, BackendWorker

        outcomes = []
        running = self.state.running("backend")
        worker = self.state.running("worker")
        recorded = self.state.services.get("worker") or {}
        wanted = self._backend_environment()
        if recorded.get("extractor") not in (None, self.extractor_environment):
            # The last run used another extractor: restart what runs so that the new
            # one is used, and have the features and folders computed again.
            self.console.say("    the extractor changed since the last run")
            self.extractor_changed = True
        if (running or worker) and recorded.get("environment") != wanted:
            # Started by an older run with other settings: restart to apply them.
            for name, entry in (("backend", running), ("worker", worker)):
                if entry:
                    self._stop_ours(name, entry, f"the ML {name}")
            running = worker = None
        if running and not _answers_within(f"{running['url']}/health", 10.0):
            self.console.say(
                f"    the backend (pid {running['pid']}) does not answer; restarting it"
            )
            self._stop_ours("backend", running, "the ML backend")
            running = None
        if running:
            self.console.say(
                f"    backend already running: {running['url']} (pid {running['pid']})"
            )
            outcomes.append("reused")
        else:
            port = _port(
                self.options.ports.get("backend"), "backend", self.state.services
            )
            self._refuse_taken(port, "the ML backend", "--port-backend")
            server = BackendServer(
                self.log_dir / "ml-backend.log", self._service_environment(), port=port
            )
            server.start(timeout=120)
            self.state.record(
                "backend",
                server.pid,
                port=server.port,
                url=server.url,
                log=str(server.log_path),
                extractor=self.extractor_environment,
                environment=wanted,
            )
            self.console.say(f"    backend started: {server.url} (pid {server.pid})")
            server.detach()
            outcomes.append("started")

        if worker:
            self.console.say(f"    worker already running (pid {worker['pid']})")
            outcomes.append("reused")
        else:
            worker = BackendWorker(
                self.log_dir / "ml-worker.log", self._service_environment()
            ).start()
            self.state.record(
                "worker",
                worker.pid,
                log=str(worker.log_path),
                extractor=self.extractor_environment,
                environment=wanted,
            )
            self.console.say(f"    worker started (pid {worker.pid})")
            worker.detach()
            outcomes.append("started")
        return "/".join(outcomes)

    # images and project

    def prepare_images(self) -> tuple[Path, int]:
        """The folder to import, under Label Studio's document root; its image count."""
        root = self.label_studio.document_root
        if self.options.image_dir is None:
            from bulkshift.datasets import build_fashion_mnist

            folder = root / f"fashion-mnist-{self.options.sample_size}"
            layout, note = sample_layout(folder)
            report = build_fashion_mnist(
                folder, n_images=self.options.sample_size, seed=0, layout=layout
            )
            self.console.say(f"    {report.summary()}")
            if note:
                self.console.say(f"    note: {note}")
            return folder, report.n_images

        source = self.options.image_dir.resolve()
        n_images = count_images(source)
        if source == root or root in source.parents:
            self.console.say(f"    {n_images} images in {source}")
            return source, n_images
        # Label Studio serves local files only under its document root; a link there
        # is followed both by the storage sync and by the file server (tested).
        link = _link_under(root, source)
        self.console.say(f"    {n_images} images in {source} (linked as {link})")
        return link, n_images

    def ensure_project(self, folder: Path) -> tuple[int, str]:
        from label_studio_sdk.core.api_error import ApiError

        key = str(folder)
        title = self.options.title or _title_for(folder)
        recorded = self.state.projects.get(key)
        if recorded:
            try:
                project = self.client.projects.get(id=recorded["id"])
                self.console.say(f"    found project {project.id} {project.title!r}")
                return project.id, "found"
            except ApiError:  # 404: deleted in Label Studio since
                logger.info("recorded project %s no longer exists", recorded["id"])
        for project in self.client.projects.list(title=title):
            if project.title == title:
                self.state.projects[key] = {"id": project.id, "title": title}
                self.state.save()
                self.console.say(f"    found project {project.id} {title!r} by title")
                return project.id, "found"
        project = self.client.projects.create(
            title=title,
            label_config=LABEL_CONFIG,
            description=f"Images of {folder}, sorted with Bulk Shift.",
            maximum_annotations=1,
        )
        self.state.projects[key] = {"id": project.id, "title": title}
        self.state.save()
        self.console.say(f"    created project {project.id} {title!r}")
        return project.id, "created"

    def ensure_storage(self, project: int, folder: Path) -> tuple[int, int]:
        """Register (once) and sync the local storage; return (new tasks, all tasks)."""
        before = self._task_count(project)
        storage = next(
            (
                s
                for s in self.client.import_storage.local.list(project=project)
                if s.path == str(folder)
            ),
            None,
        )
        if storage is None:
            storage = self.client.import_storage.local.create(
                project=project,
                path=str(folder),
                use_blob_urls=True,
                regex_filter=IMAGE_REGEX,
                recursive_scan=True,
                title=folder.name[:2048],
            )

        # SQLite lets one writer in at a time: while the backend's worker writes
        # predictions, the sync may fail with "database is locked". Try again a few
        # times; any other failure is reported at once.
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            status, detail = self._sync_once(project, storage.id)
            if status != "failed" or not _database_busy(detail):
                break
            if attempt < SYNC_ATTEMPTS:
                wait = SYNC_BACKOFF_SECONDS * 2 ** (attempt - 1)
                self.console.say(
                    f"    Label Studio's database is busy; trying again in {wait:.0f} s"
                )
                time.sleep(wait)
        if status == "failed":
            if _database_busy(detail):
                raise RunError(
                    f"Label Studio's database was busy (SQLite: database is locked) "
                    f"{SYNC_ATTEMPTS} times while syncing {folder}; rerun "
                    f"{_rerun_command()} (the busy writer, usually the backend's "
                    "worker, is done by then)"
                )
            raise RunError(
                f"Label Studio could not sync {folder}: {_last_line(detail)}; the "
                f"full error is in {self.log_dir / 'label-studio.log'}"
            )
        after = self._task_count(project)
        return after - before, after

    def _sync_once(self, project: int, storage_id: int) -> tuple[str, str]:
        """Sync the storage and wait for the outcome: (status, error text)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            self.client.import_storage.local.sync(id=storage_id)
        except ApiError as error:
            return "failed", f"HTTP {error.status_code}: {error.body}"
        deadline = time.monotonic() + self.options.timeout
        while True:
            storage = self.client.import_storage.local.get(id=storage_id)
            status = storage.status
            if status in ("completed", "completed_with_errors", "failed", None):
                return status, str(getattr(storage, "traceback", None) or "")
            if time.monotonic() > deadline:
                raise RunError(
                    f"the storage sync of project {project} did not finish "
                    f"in {self.options.timeout:.0f} s (status {status})"
                )
            time.sleep(1)

    def _task_count(self, project: int) -> int:
        return int(self.client.projects.get(id=project).task_number or 0)

    def connect_backend(self, project: int) -> str:
        url = self.state.services["backend"]["url"]
        backends = self.client.ml.list(project=project)
        for backend in backends:
            if backend.url.rstrip("/") == url:
                return "already connected"
        if backends:
            # The backend moved to another port since the last run.
            self.client.ml.update(backends[0].id, url=url, project=project)
            return f"moved to {url}"
        self.client.ml.create(
            project=project, url=url, title=BACKEND_TITLE, is_interactive=True
        )
        return f"connected {url}"

    def start_plugin(self, project: int, secret: str) -> str:
        entry = self.state.running("plugin")
        projects = sorted({p["id"] for p in self.state.projects.values()} | {project})
        if entry:
            healthy = _answers_within(f"{entry['url']}/health", 10.0)
            if healthy and project in entry.get("projects", []):
                self.console.say(
                    f"    already running: {entry['url']} (pid {entry['pid']})"
                )
                return "reused"
            # A new project (the service registers each project's webhook when it
            # starts), or a service that stopped answering: restart it, on the same
            # port once the old process has let go of it.
            reason = f"for project {project}" if healthy else "(it did not answer)"
            self.console.say(
                f"    restarting the service (pid {entry['pid']}) {reason}"
            )
            self._stop_ours("plugin", entry, "the bulk-shift service")

        port = _port(self.options.ports.get("plugin"), "plugin", self.state.services)
        self._refuse_taken(port, "the bulk-shift service", "--port-plugin")
        environment = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            BULKSHIFT_WEBHOOK_SECRET=secret,
            **self._service_environment(),
        )
        command = [
            sys.executable,
            "-m",
            "bulk_shift_plugin",
            "--host",
            LOCALHOST,
            "--port",
            str(port),
            "--redis-url",
            self.redis_url,
            "--label-studio-url",
            self.label_studio.url,
        ]
        for known in projects:
            command += ["--project", str(known)]
        log_path = self.log_dir / "plugin.log"
        process = spawn(command, log_path, environment)
        url = f"http://{LOCALHOST}:{port}"
        wait_until(
            lambda: _answers(f"{url}/health"),
            process,
            120,
            "the bulk-shift service",
            log_path,
        )
        self.state.record(
            "plugin",
            process.pid,
            port=port,
            url=url,
            projects=projects,
            log=str(log_path),
        )
        self.console.say(f"    started {url} (pid {process.pid})")
        return "started"

    def _stop_ours(self, name: str, entry: dict, what: str) -> None:
        """Stop a process this stack recorded and wait until its port is free."""
        stop_recorded(entry, what)
        port = entry.get("port")
        if port:
            # A threaded server's main thread may be gone (its PID a zombie) while
            # its other threads still hold the listening socket for a moment.
            deadline = time.monotonic() + PORT_RELEASE_SECONDS
            while port_in_use(port) and time.monotonic() < deadline:
                time.sleep(0.2)

    def _refuse_taken(self, port: int, what: str, flag: str) -> None:
        """Raise if ``port`` is taken, naming the holder when it is one of ours."""
        if not port_in_use(port):
            return
        holders = listening_pids(port)
        ours = {
            name: entry
            for name, entry in self.state.services.items()
            if entry.get("pid") and _in_process_group(holders, entry["pid"])
        }
        if ours:
            name, entry = next(iter(ours.items()))
            raise RunError(
                f"port {port} on {LOCALHOST} is still held by Bulk Shift's own {name} "
                f"(pid {entry['pid']}), which did not stop; run "
                f"./scripts/down.sh --data-dir {self.data_dir}, then up again"
            )
        holder = f" (pid {', '.join(map(str, sorted(holders)))})" if holders else ""
        raise RunError(
            f"port {port} on {LOCALHOST} is taken by another program{holder}, so "
            f"{what} cannot use it; stop that program or pick another port with "
            f"{flag} PORT"
        )

    def check_webhooks(self, project: int, secret: str) -> None:
        """Make sure Label Studio sends the project's events to the service, signed."""
        from bulk_shift_plugin.labelstudio import SECRET_HEADER

        url = f"{self.state.services['plugin']['url']}/webhook"
        for hook in self.client.webhooks.list(project=str(project)):
            headers = hook.headers or {}
            if hook.url == url and headers.get(SECRET_HEADER) == secret:
                if not hook.is_active:
                    raise RunError(
                        f"the webhook {hook.id} to {url} is switched off; "
                        "switch it on in the project's settings"
                    )
                return
        raise RunError(
            f"project {project} has no webhook to {url} with the shared secret; see "
            f"{self.log_dir / 'plugin.log'}"
        )

    def _link_log(self, name: str, target: Path) -> None:
        link = self.log_dir / name
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                return
            link.unlink()
        link.symlink_to(target)


def sample_layout(folder: Path) -> tuple[str, str | None]:
    """The layout to build the Fashion-MNIST sample in, and a note for the person.

    ``flat`` (neutral file names: the Data Manager shows file paths, and a path with
    the category in it gives the answer away). A sample that an earlier version built
    folder-per-category in ``folder`` stays so: its Label Studio tasks point at those
    files, and a rebuild would add a second task per image beside them.
    """
    from bulkshift.datasets.fashion_mnist import built_layout

    if built_layout(folder) != "by-category":
        return "flat", None
    return "by-category", (
        f"this sample was built with each image's category in its path ({folder}); "
        "to get neutral names, run ./scripts/down.sh, delete the project in Label "
        f"Studio, remove {folder} and run up again"
    )


_IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)


def count_images(source: Path) -> int:
    """The images in ``source`` and its subfolders (hidden ones left out).

    Raises
    ------
    RunError
        If ``source`` is not a folder or holds no image.
    """
    if not source.is_dir():
        raise RunError(f"IMAGE_DIR {source} is not a folder; give a folder of images")
    n_images = sum(
        1
        for path in source.rglob("*")
        if path.is_file()
        and path.suffix.lower() in _IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(source).parts)
    )
    if n_images == 0:
        raise RunError(
            f"{source} holds no image ({', '.join(sorted(_IMAGE_SUFFIXES))}); "
            "give a folder of images (subfolders are read too)"
        )
    return n_images


def check_options(options: UpOptions) -> None:
    """Refuse what cannot work before anything is started."""
    if options.image_dir is not None:
        count_images(options.image_dir.resolve())
    if options.vgg16_weights is not None and not options.vgg16_weights.is_file():
        raise RunError(
            f"--vgg16-weights {options.vgg16_weights}: no such file; give the path of "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    if options.sample_size < 10:
        raise RunError(
            f"--sample-size {options.sample_size}: use at least 10 (one image per "
            "Fashion-MNIST class)"
        )


def _without_password(url: str) -> str:
    """``url`` with any password replaced, for messages (REDIS_URL may carry one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 401
    except OSError:
        return False


def _answers_within(url: str, seconds: float) -> bool:
    """``_answers``, tried again for up to ``seconds`` (a busy server is slow)."""
    deadline = time.monotonic() + seconds
    while True:
        if _answers(url):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def listening_pids(port: int) -> set[int]:
    """PIDs of the processes listening on TCP ``port`` (those this user may see)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    if not inodes:
        return pids
    for process in Path("/proc").iterdir():
        if not process.name.isdigit():
            continue
        try:
            for descriptor in (process / "fd").iterdir():
                if os.readlink(descriptor) in inodes:
                    pids.add(int(process.name))
                    break
        except OSError:
            continue
    return pids


def _in_process_group(pids: set[int], group: int) -> bool:
    """Whether any of ``pids`` is ``group`` or belongs to its process group."""
    for pid in pids:
        try:
            if pid == group or os.getpgid(pid) == group:
                return True
        except ProcessLookupError:
            continue
    return False


def _database_busy(detail: str) -> bool:
    return "database is locked" in (detail or "")


def _last_line(detail: str) -> str:
    lines = [line.strip() for line in (detail or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no reason given"


def _rerun_command() -> str:
    """The command line this run was started with, to rerun it."""
    import shlex

    return shlex.join(["./scripts/up.sh", *sys.argv[2:]])


def _link_under(root: Path, source: Path) -> Path:
    """A link ``root/<name>`` to ``source``: the same one on every run."""
    name = source.name or "images"
    for number in range(1, 1000):
        link = root / (name if number == 1 else f"{name}-{number}")
        if link.is_symlink() and link.resolve() == source:
            return link
        if not link.exists() and not link.is_symlink():
            link.symlink_to(source, target_is_directory=True)
            return link
    raise RunError(f"too many links named {name}-N in {root}; remove the old ones")


def _title_for(folder: Path) -> str:
    title = folder.name.replace("_", " ").strip() or "Images"
    # Label Studio wants at least 3 characters and at most 50.
    if len(title) < 3:
        title = f"Images {title}"
    return title[:50]


# -- waiting for the pre-annotations -------------------------------------------------


def wait_for_predictions(
    stack: Stack, project: int, n_tasks: int, timeout: float
) -> dict:
    """Wait until the backend's predictions of ``project`` are in Label Studio.

    The backend queues a refresh when it is connected (``/setup``) or when tasks are
    created; this follows that job through Redis and Label Studio, with a progress bar
    over the tasks, and asks for a refresh itself if none is queued and the project
    has no model yet.
    """
    import redis
    from label_studio_sdk.core.api_error import ApiError
    from rq import Queue
    from rq.registry import FailedJobRegistry, StartedJobRegistry

    from bulkshift.store import BackendStore
    from ml_backend.config import Settings
    from ml_backend.jobs import pending_key, progress_key

    client = redis.Redis.from_url(stack.redis_url)
    backend_store = BackendStore(client)
    queue_name = Settings.from_environment().queue_name
    queue = Queue(queue_name, connection=client)
    started = StartedJobRegistry(queue=queue)
    failed = FailedJobRegistry(queue=queue)
    failed_before = failed.count
    pending = pending_key(project)
    progress = progress_key(project)

    def busy() -> bool:
        return bool(client.exists(pending)) or queue.count > 0 or started.count > 0

    version_before = backend_store.model_version(project)
    if (
        version_before
        and not stack.extractor_changed
        and not busy()
        and _predictions_in(stack, project, n_tasks)
    ):
        return {"model_version": version_before, "reused": True}
    if not busy():
        # No refresh queued (for example the backend was already connected and no
        # task is new): ask Label Studio to send START_TRAINING to the backend.
        for backend in stack.client.ml.list(project=project):
            try:
                stack.client.ml.train(backend.id)
            except ApiError as error:
                raise RunError(
                    "Label Studio could not ask the ML backend to start "
                    f"(HTTP {error.status_code}); see "
                    f"{stack.log_dir / 'ml-backend.log'}"
                ) from None

    bar = _Progress(n_tasks, stack.console)
    deadline = time.monotonic() + timeout
    seen_busy = False
    try:
        while True:
            seen_busy = seen_busy or busy()
            raw = client.get(progress)
            if raw:
                reported = json.loads(raw)
                bar.update(
                    reported.get("done", 0),
                    reported.get("stage", "working"),
                    reported.get("total") or n_tasks,
                )
            elif bar.stage is None:
                # The worker reports its stages once the job starts; the key is gone
                # again once it has finished.
                bar.update(0, "waiting for the backend's worker")
            version = backend_store.model_version(project)
            if version and version != version_before and not busy():
                break
            if seen_busy and not busy():
                if version and _predictions_in(stack, project, n_tasks):
                    break
                raise RunError(
                    "the backend's refresh ended without pushing predictions; see "
                    f"{stack.log_dir / 'ml-worker.log'}"
                )
            if failed.count > failed_before:
                raise RunError(
                    "the backend's refresh job failed; see "
                    f"{stack.log_dir / 'ml-worker.log'}"
                )
            if not stack.state.running("worker"):
                raise RunError(
                    f"the backend worker stopped; see {stack.log_dir / 'ml-worker.log'}"
                )
            if time.monotonic() > deadline:
                raise RunError(
                    f"no predictions after {timeout:.0f} s; see "
                    f"{stack.log_dir / 'ml-worker.log'} (or raise --timeout)"
                )
            time.sleep(1)
        bar.update(n_tasks, "predictions in Label Studio", n_tasks)
    finally:
        bar.close()
    return {"model_version": version, "reused": False}


def _predictions_in(stack: Stack, project: int, n_tasks: int) -> bool:
    """Whether Label Studio holds a prediction for every task with a readable image
    (an unreadable one gets none)."""
    import redis

    from ml_backend.jobs import errors_key

    unreadable = redis.Redis.from_url(stack.redis_url).hlen(errors_key(project))
    details = stack.client.projects.get(id=project)
    return bool(details.model_version) and (
        int(details.total_predictions_number or 0) >= n_tasks - unreadable
    )


class _Progress:
    """A tqdm bar per stage on a terminal; otherwise a line per stage and every 15 s
    (logs, CI)."""

    every_seconds = 15.0

    def __init__(self, total: int, console: Console):
        self.console = console
        self.total = total
        self.stage = None
        self.bar = None
        self.last_line = 0.0
        self.started = time.monotonic()
        self.stage_started = self.started
        self.stage_done = 0
        self.tty = sys.stderr.isatty()

    def update(self, done: int, stage: str, total: int | None = None) -> None:
        total = total or self.total
        if self.tty:
            from tqdm import tqdm

            if stage != self.stage:
                self.close()
                self.bar = tqdm(
                    total=total, unit="img", desc=f"    {stage}", file=sys.stderr
                )
            self.bar.total = total
            # update() rather than setting n, so that tqdm's rate stays true.
            self.bar.update(done - self.bar.n)
        elif stage != self.stage or time.monotonic() - self.last_line > (
            self.every_seconds
        ):
            if stage != self.stage:
                self.stage_started, self.stage_done = time.monotonic(), done
            seconds = time.monotonic() - self.started
            self.console.say(
                f"    {stage}: {done}/{total} (at {seconds:.0f} s"
                f"{self._eta(done, total)})"
            )
            self.last_line = time.monotonic()
        self.stage = stage

    def _eta(self, done: int, total: int) -> str:
        """``, about N s left`` from this stage's rate so far, or nothing."""
        elapsed = time.monotonic() - self.stage_started
        progressed = done - self.stage_done
        if progressed <= 0 or elapsed < 1 or done >= total:
            return ""
        return f", about {(total - done) * elapsed / progressed:.0f} s left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- commands ------------------------------------------------------------------------


def up(options: UpOptions, console: Console) -> dict:
    """Bring the stack up on a folder; return what was done (for tests)."""
    check_options(options)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    (options.data_dir / LOG_DIR).mkdir(exist_ok=True)
    stack = Stack(options, console)
    outcome = {}
    started = time.monotonic()

    with console.step("Redis"):
        outcome["redis"] = stack.start_redis()
    with console.step("Label Studio"):
        outcome["label_studio"] = stack.start_label_studio()
    with console.step("Feature extractor"):
        extractor = stack.choose_extractor()
        console.say(f"    {extractor}")
    with console.step("ML backend and worker"):
        outcome["backend"] = stack.start_backend()
    with console.step("Images" if options.image_dir else "Fashion-MNIST sample"):
        folder, _ = stack.prepare_images()
    with console.step("Project"):
        project, outcome["project"] = stack.ensure_project(folder)
    with console.step("Local storage sync"):
        new_tasks, n_tasks = stack.ensure_storage(project, folder)
        console.say(f"    {n_tasks} tasks ({new_tasks} new)")
    secret = webhook_secret(options.data_dir)
    with console.step("Bulk-shift service and webhooks"):
        outcome["plugin"] = stack.start_plugin(project, secret)
        stack.check_webhooks(project, secret)
        console.say("    webhooks registered with the shared secret")
    with console.step("Connect the ML backend"):
        console.say(f"    {stack.connect_backend(project)}")
    with console.step("Features and folders"):
        predictions = wait_for_predictions(stack, project, n_tasks, options.timeout)
        if predictions["reused"]:
            console.say(
                f"    already done: model {predictions['model_version']} "
                "(cached; nothing recomputed)"
            )
        else:
            console.say(
                f"    model {predictions['model_version']}: predictions on "
                f"{n_tasks} tasks"
            )

    outcome.update(
        project=project,
        project_outcome=outcome["project"],
        n_tasks=n_tasks,
        new_tasks=new_tasks,
        folder=str(folder),
        model_version=predictions["model_version"],
        predictions_reused=predictions["reused"],
        seconds=time.monotonic() - started,
    )
    outcome["unreadable"] = report_unreadable(stack, project, console)
    _print_summary(stack, project, console)
    return outcome


def report_unreadable(stack: Stack, project: int, console: Console) -> int:
    """Say how many images the backend could not read, show the first few with the
    reason, and write the full list to a file; return the count."""
    import redis

    from ml_backend.jobs import errors_key

    client = redis.Redis.from_url(stack.redis_url)
    errors = {
        int(task): reason.decode(errors="replace")
        for task, reason in client.hgetall(errors_key(project)).items()
    }
    path = stack.log_dir / f"unreadable-images-project-{project}.txt"
    if not errors:
        path.unlink(missing_ok=True)
        return 0

    root = str(stack.label_studio.document_root)
    lines = [
        f"task {task}: {_local_path(reason, root)}"
        for task, reason in sorted(errors.items())
    ]
    path.write_text("\n".join(lines) + "\n")
    console.say("")
    console.say(
        f"{len(errors)} image{'s' if len(errors) != 1 else ''} could not be read and "
        "got no prediction:"
    )
    for line in lines[:UNREADABLE_SHOWN]:
        console.say(f"  {line[:300]}")
    if len(lines) > UNREADABLE_SHOWN:
        console.say(f"  … and {len(lines) - UNREADABLE_SHOWN} more")
    console.say(f"  full list: {path}")
    return len(errors)


def _local_path(reason: str, document_root: str) -> str:
    """``reason`` with Label Studio's local-files URLs written as file paths."""
    import re

    def to_path(match: re.Match) -> str:
        return str(Path(document_root) / urllib.parse.unquote(match.group(1)))

    return re.sub(r"/data/local-files/\?d=([^\s)]+)", to_path, reason)


def _print_summary(stack: Stack, project: int, console: Console) -> None:
    from bulkshift.stack.labelstudio import CREDENTIALS_FILE

    ls = stack.label_studio
    plugin = stack.state.services["plugin"]["url"]
    console.say("")
    console.timing_table()
    console.say("")
    console.say(
        f"Label Studio   {ls.url}/projects/{project}/data   (sort by Prediction "
        "score: lowest = least certain first)"
    )
    console.say(
        f"  login        {ls.username}; password and API token in "
        f"{(stack.data_dir / CREDENTIALS_FILE).resolve()} (mode 600)"
    )
    console.say(f"Name folders   {plugin}/projects/{project}/naming")
    console.say(f"Review shifts  {plugin}/projects/{project}/review")
    console.say(f"Logs           {stack.log_dir}/")
    console.say(f"Stop           ./scripts/down.sh --data-dir {stack.data_dir}")


def down(data_dir: Path, console: Console) -> list[str]:
    """Stop every recorded process, newest service first; return what was stopped."""
    state = StackState.load(data_dir)
    stopped = []
    for name in SERVICES:
        entry = state.services.get(name)
        if not entry:
            continue
        if stop_recorded(entry, name):
            stopped.append(name)
            console.say(f"stopped {name} (pid {entry['pid']})")
        entry["pid"] = None
        entry["start_time"] = None
    if state.services:
        state.save()
    if not stopped:
        console.say(f"nothing was running (data dir {data_dir})")
    return stopped


def status(data_dir: Path, console: Console) -> dict[str, bool]:
    state = StackState.load(data_dir)
    alive = {}
    for name in reversed(SERVICES):
        entry = state.services.get(name)
        if not entry:
            continue
        running = state.running(name) is not None
        alive[name] = running
        where = entry.get("url") or ""
        console.say(
            f"{name:<13} {'running' if running else 'stopped':<8} "
            f"pid {entry.get('pid') or '-':<8} {where}"
        )
    for folder, project in state.projects.items():
        console.say(f"project {project['id']:<5} {project['title']!r} on {folder}")
    if not alive:
        console.say(f"no stack recorded in {data_dir}")
    return alive


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bulkshift.stack.run",
        description="Start, stop or show the Bulk Shift stack (Label Studio, Redis, "
        "the ML backend and its worker, the bulk-shift service).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def data_dir_option(command):
        command.add_argument(
            "--data-dir",
            help="where everything is kept (BULKSHIFT_DATA_DIR, default ./var)",
        )

    start = commands.add_parser("up", help="start everything and open a project")
    start.add_argument(
        "image_dir",
        nargs="?",
        type=Path,
        help="folder of images (subfolders too); default: a sample of "
        "Fashion-MNIST product photos",
    )
    data_dir_option(start)
    start.add_argument(
        "--vgg16-weights",
        type=Path,
        help="VGG16 weights file (BULKSHIFT_VGG16_WEIGHTS); without "
        "ImageNet weights the pixels extractor is used",
    )
    start.add_argument(
        "--port-ls",
        type=int,
        help="Label Studio port (BULKSHIFT_LS_PORT, default 8080)",
    )
    start.add_argument(
        "--port-backend",
        type=int,
        help="ML backend port (BULKSHIFT_BACKEND_PORT, default 9090)",
    )
    start.add_argument(
        "--port-plugin",
        type=int,
        help="bulk-shift service port (BULKSHIFT_PLUGIN_PORT, default 9095)",
    )
    start.add_argument(
        "--port-redis",
        type=int,
        help="embedded Redis port (BULKSHIFT_REDIS_PORT, default: a free one)",
    )
    start.add_argument(
        "--sample-size",
        type=int,
        default=DEFAULT_SAMPLE_SIZE,
        help="images in the Fashion-MNIST sample (default 3000)",
    )
    start.add_argument("--title", help="project title (default: the folder's name)")
    start.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for each slow step (default 1800)",
    )

    for name, text in (
        ("down", "stop every process up started"),
        ("status", "show what runs"),
    ):
        data_dir_option(commands.add_parser(name, help=text))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    console = Console()
    data_dir = data_dir_of(arguments)
    try:
        if arguments.command == "down":
            down(data_dir, console)
            return 0
        if arguments.command == "status":
            alive = status(data_dir, console)
            return 0 if alive and all(alive.values()) else 3
        options = UpOptions(
            data_dir=data_dir,
            image_dir=arguments.image_dir,
            ports={
                "label_studio": arguments.port_ls,
                "backend": arguments.port_backend,
                "plugin": arguments.port_plugin,
                "redis": arguments.port_redis,
            },
            redis_url=os.environ.get("REDIS_URL") or None,
            vgg16_weights=arguments.vgg16_weights,
            sample_size=arguments.sample_size,
            timeout=arguments.timeout,
            title=arguments.title,
        )
        console.say(f"Bulk Shift: data in {data_dir}")
        up(options, console)
        return 0
    except (RunError, StackError) as error:
        console.say(f"error: {error}")
        if arguments.command == "up":
            console.say(
                "Processes started so far keep running; stop them with "
                f"./scripts/down.sh --data-dir {data_dir}"
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
