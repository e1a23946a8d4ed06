"""The one command: ``python -m bulkshift.stack.run up|down`` on a small image folder.

It starts its own stack (Redis, Label Studio, the ML backend and its worker, the
bulk-shift service) on free ports under a temporary data directory, exactly as
``scripts/up.sh`` does, then checks what a person would find in Label Studio, that a
second ``up`` reuses everything, and that ``down`` stops every process.
"""

import io
import itertools
import json
import os
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from label_studio_sdk import LabelStudio

from bulkshift.datasets import build_fashion_mnist
from bulkshift.stack import free_port
from bulkshift.stack import run as run_module
from bulkshift.stack.run import (
    SERVICES,
    Console,
    RunError,
    Stack,
    StackState,
    UpOptions,
    _link_under,
    _title_for,
    process_start_time,
    report_unreadable,
    sample_layout,
    webhook_secret,
)
from bulkshift.store import BackendStore, features_key

REPO_ROOT = Path(__file__).resolve().parents[2]
N_PER_GROUP = 10


def run_command(*arguments, timeout=900) -> subprocess.CompletedProcess:
    environment = dict(os.environ)
    # The command must start its own embedded Redis, whatever the caller has set.
    environment.pop("REDIS_URL", None)
    environment["BULKSHIFT_EXTRACTOR"] = "pixels"
    return subprocess.run(
        [sys.executable, "-m", "bulkshift.stack.run", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def show_logs(data_dir: Path) -> None:
    for log in sorted((data_dir / "logs").glob("*.log")):
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack brought up twice on 30 generated images, then brought down."""
    from conftest import make_image_set

    base = tmp_path_factory.mktemp("run-command")
    images = make_image_set(base / "three-shapes", N_PER_GROUP, seed=5)
    images.make_broken("zz-broken.png")
    more = make_image_set(base / "more-shapes", 2, seed=6)
    data_dir = base / "var"
    ports = [
        "--data-dir",
        str(data_dir),
        "--port-ls",
        str(free_port()),
        "--port-backend",
        str(free_port()),
        "--port-plugin",
        str(free_port()),
        "--port-redis",
        str(free_port()),
        "--timeout",
        "600",
    ]
    up = ["up", str(images.directory), *ports]
    runs = {}
    try:
        runs["first"] = run_command(*up)
        print(runs["first"].stdout, runs["first"].stderr)
        assert runs["first"].returncode == 0, runs["first"].stdout[-2000:]
        state = StackState.load(data_dir)
        runs["state_after_first"] = json.loads(json.dumps(state.services))
        runs["snapshot_after_first"] = snapshot(data_dir, state)

        runs["second"] = run_command(*up)
        print(runs["second"].stdout, runs["second"].stderr)
        assert runs["second"].returncode == 0, runs["second"].stdout[-2000:]
        runs["snapshot_after_second"] = snapshot(data_dir, StackState.load(data_dir))

        # Another folder while the stack runs: a second project, for which the
        # service restarts on its port.
        runs["third"] = run_command("up", str(more.directory), *ports)
        print(runs["third"].stdout, runs["third"].stderr)
        runs["state_after_third"] = json.loads(
            json.dumps(StackState.load(data_dir).services)
        )
    except BaseException:
        show_logs(data_dir)
        run_command("down", "--data-dir", str(data_dir))
        raise
    runs["down"] = run_command("down", "--data-dir", str(data_dir), timeout=120)
    # Stop anything the assertions below would otherwise leave behind.
    run_command("down", "--data-dir", str(data_dir), timeout=120)
    return {"data_dir": data_dir, "images": images, **runs}


def snapshot(data_dir: Path, state: StackState) -> dict:
    """What Label Studio and Redis hold, read while the stack runs."""
    credentials = json.loads((data_dir / "credentials.json").read_text())
    client = LabelStudio(
        base_url=state.services["label_studio"]["url"], api_key=credentials["token"]
    )
    projects = [p for p in client.projects.list() if p.title == "three-shapes"]
    project = projects[0]
    tasks = list(client.tasks.list(project=project.id, fields="all"))
    store_client = redis.Redis.from_url(state.services["redis"]["url"])
    details = client.projects.get(id=project.id)
    predictions = {}
    for task in tasks:
        for prediction in task.predictions or []:
            prediction = (
                prediction if isinstance(prediction, dict) else prediction.dict()
            )
            if prediction.get("model_version") == details.model_version:
                predictions[task.id] = prediction
    plugin_url = state.services["plugin"]["url"]
    return {
        "n_projects": len(projects),
        "project": project.id,
        "n_tasks": len(tasks),
        "model_version": details.model_version,
        "backend_version": BackendStore(store_client).model_version(project.id),
        "clusters": BackendStore(store_client).clusters(project.id),
        "predictions": predictions,
        "n_feature_keys": len(list(store_client.scan_iter(features_key("*", "*")))),
        "n_backends": len(client.ml.list(project=project.id)),
        "n_storages": len(client.import_storage.local.list(project=project.id)),
        "webhooks": [
            (hook.url, (hook.headers or {}).get("X-Bulkshift-Secret"))
            for hook in client.webhooks.list(project=str(project.id))
            if hook.url == f"{plugin_url}/webhook"
        ],
        "token": credentials["token"],
        "password": credentials["password"],
    }


@pytest.mark.integration
@pytest.mark.slow
def test_first_up_creates_a_project_with_cluster_predictions(stack):
    first = stack["snapshot_after_first"]
    n_images = N_PER_GROUP * 3

    assert first["n_projects"] == 1
    assert first["n_tasks"] == n_images + 1  # the broken image too
    assert first["backend_version"] == first["model_version"]
    # Clustered once, although Label Studio called /setup several times meanwhile.
    assert first["model_version"].endswith("-0001-clusters")
    assert len(first["predictions"]) == n_images
    cluster_names = {c["name"] for c in first["clusters"]["clusters"]}
    for prediction in first["predictions"].values():
        (choice,) = prediction["result"][0]["value"]["choices"]
        assert choice in cluster_names
    assert first["n_feature_keys"] == n_images
    assert first["n_backends"] == 1 and first["n_storages"] == 1
    # The folder is linked under the document root, and read from disk.
    worker_log = (stack["data_dir"] / "logs" / "ml-worker.log").read_text()
    assert f"{n_images + 1} images read from disk, 0 downloaded" in worker_log


@pytest.mark.integration
@pytest.mark.slow
def test_up_lists_the_unreadable_images(stack):
    first = stack["first"].stdout
    project = stack["snapshot_after_first"]["project"]
    full_list = stack["data_dir"] / "logs" / f"unreadable-images-project-{project}.txt"

    assert "1 image could not be read" in first
    assert f"{stack['images'].directory.name}/zz-broken.png" in first
    assert f"full list: {full_list}" in first
    assert "zz-broken.png" in full_list.read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_up_on_another_folder_restarts_the_service_on_its_port(stack):
    third = stack["third"]
    assert third.returncode == 0, third.stdout[-2000:]
    before, after = stack["state_after_first"]["plugin"], stack["state_after_third"]
    assert "restarting the service" in third.stdout
    assert after["plugin"]["port"] == before["port"]
    assert after["plugin"]["pid"] != before["pid"]
    assert len(after["plugin"]["projects"]) == 2
    assert "another program" not in third.stdout


@pytest.mark.integration
@pytest.mark.slow
def test_label_studio_data_is_private_and_logged_once(stack):
    data = stack["data_dir"] / "label-studio"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    database = data / "label_studio.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    # Each request line once (Label Studio's own settings wrote them twice).
    lines = (stack["data_dir"] / "label-studio.log").read_text().splitlines()
    requests = [line for line in lines if "django.server" in line]
    assert requests
    doubled = sum(1 for a, b in itertools.pairwise(requests) if a == b)
    assert doubled < len(requests) / 10


@pytest.mark.integration
@pytest.mark.slow
def test_webhooks_carry_the_secret_kept_in_a_private_file(stack):
    secret_file = stack["data_dir"] / "webhook-secret"
    secret = secret_file.read_text().strip()

    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stack["snapshot_after_first"]["webhooks"] == [
        (f"{stack['state_after_first']['plugin']['url']}/webhook", secret)
    ]
    for run in ("first", "second"):
        assert secret not in stack[run].stdout + stack[run].stderr


@pytest.mark.integration
@pytest.mark.slow
def test_output_names_the_pages_and_never_the_token(stack):
    first, second = stack["first"].stdout, stack["second"].stdout
    token = stack["snapshot_after_first"]["token"]
    project = stack["snapshot_after_first"]["project"]
    plugin_url = stack["state_after_first"]["plugin"]["url"]

    assert token not in first + stack["first"].stderr
    assert token not in second + stack["second"].stderr
    # The password is never printed; where it is kept is, as an absolute path.
    password = stack["snapshot_after_first"]["password"]
    for run in ("first", "second", "third"):
        assert password not in stack[run].stdout + stack[run].stderr
    credentials = stack["data_dir"].resolve() / "credentials.json"
    assert f"its password is in {credentials}" in first
    assert f"password and API token in {credentials}" in second
    assert f"{plugin_url}/projects/{project}/naming" in first
    assert f"{plugin_url}/projects/{project}/review" in first
    assert "Time per step:" in first
    assert "scripts/down.sh" in first


@pytest.mark.integration
@pytest.mark.slow
def test_second_up_reuses_everything(stack):
    first = stack["snapshot_after_first"]
    second = stack["snapshot_after_second"]

    assert second["n_projects"] == 1
    assert second["project"] == first["project"]
    assert second["n_tasks"] == first["n_tasks"]
    # No refresh ran: the same model, the same feature vectors, one connection each.
    assert second["model_version"] == first["model_version"]
    assert second["n_feature_keys"] == first["n_feature_keys"]
    assert second["n_backends"] == 1 and second["n_storages"] == 1
    assert len(second["webhooks"]) == 1
    assert "nothing recomputed" in stack["second"].stdout
    worker_log = (stack["data_dir"] / "logs" / "ml-worker.log").read_text()
    assert worker_log.count(f"project {first['project']}: bulkshift-") == 1


@pytest.mark.integration
@pytest.mark.slow
def test_down_stops_every_process(stack):
    assert stack["down"].returncode == 0, stack["down"].stdout
    recorded = stack["state_after_first"]
    assert set(recorded) == set(SERVICES)
    for name, entry in recorded.items():
        assert process_start_time(entry["pid"]) != entry["start_time"], name
    for name in SERVICES:
        assert f"stopped {name}" in stack["down"].stdout


# -- without servers: what up refuses, and its small helpers -----------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["up", "/nonexistent/images"], "is not a folder"),
        (["up", "--vgg16-weights", "/nonexistent/vgg16.h5"], "no such file"),
        (["up", "--sample-size", "3"], "use at least 10"),
    ],
)
def test_up_refuses_bad_input_before_starting_anything(tmp_path, arguments, message):
    data_dir = tmp_path / "var"

    result = run_command(*arguments, "--data-dir", str(data_dir), timeout=120)

    assert result.returncode == 1
    assert message in result.stdout
    assert not (data_dir / "stack.json").exists()


def test_up_refuses_a_folder_without_images(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")

    result = run_command(
        "up", str(tmp_path / "notes"), "--data-dir", str(tmp_path / "var"), timeout=120
    )

    assert result.returncode == 1
    assert "holds no image" in result.stdout


def test_down_without_a_stack_says_so(tmp_path):
    result = run_command("down", "--data-dir", str(tmp_path), timeout=120)

    assert result.returncode == 0
    assert "nothing was running" in result.stdout


def test_webhook_secret_is_made_once_and_private(tmp_path):
    first = webhook_secret(tmp_path)
    second = webhook_secret(tmp_path)

    assert first == second
    assert len(first) == 64
    assert stat.S_IMODE((tmp_path / "webhook-secret").stat().st_mode) == 0o600


def test_a_recorded_pid_is_ours_only_with_its_start_time(tmp_path):
    state = StackState(tmp_path / "stack.json")
    state.record("worker", os.getpid())

    assert state.running("worker")["pid"] == os.getpid()
    state.services["worker"]["start_time"] -= 1  # the PID reused by another process
    assert state.running("worker") is None
    assert process_start_time(2**22 + 1) is None  # above Linux's PID limit


def test_an_outside_folder_is_linked_once_under_the_document_root(tmp_path):
    root, source = tmp_path / "files", tmp_path / "photos"
    root.mkdir()
    source.mkdir()
    (root / "photos").mkdir()  # a folder of the same name already there

    link = _link_under(root, source)

    assert link == root / "photos-2"
    assert link.resolve() == source
    assert _link_under(root, source) == link


def test_project_title_is_the_folder_name():
    assert _title_for(Path("/data/summer_catalogue")) == "summer catalogue"
    assert _title_for(Path("/x/ab")) == "Images ab"
    assert len(_title_for(Path("/x/" + "a" * 80))) == 50


def test_the_demo_sample_is_flat_unless_an_older_tree_is_there(tmp_path):
    def idx_bytes(array):  # the IDX format: 0, 0, type 8 (bytes), dims, sizes
        header = bytes([0, 0, 8, array.ndim]) + struct.pack(
            f">{array.ndim}I", *array.shape
        )
        return header + array.astype(np.uint8).tobytes()

    source = tmp_path / "source"
    source.mkdir()
    (source / "train-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros((20, 4, 4), dtype=np.uint8))
    )
    (source / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(20) % 10))
    old = tmp_path / "old"
    build_fashion_mnist(old, n_images=10, source_dir=source)  # the old default

    assert sample_layout(tmp_path / "new") == ("flat", None)
    layout, note = sample_layout(old)
    # Rebuilding it flat would give its project a second task per image.
    assert layout == "by-category"
    assert "scripts/down.sh" in note and f"remove {old}" in note
    build_fashion_mnist(old, n_images=10, source_dir=source, layout="flat")
    assert sample_layout(old) == ("flat", None)


# -- restarts, busy databases, unreadable images, help ---------------------------------


def _stack_for(tmp_path, client=None):
    """A Stack over ``tmp_path`` without servers (its methods under test need none)."""
    options = UpOptions(
        data_dir=tmp_path,
        image_dir=None,
        ports={},
        redis_url=None,
        vgg16_weights=None,
        sample_size=10,
        timeout=30,
    )
    (tmp_path / "logs").mkdir(exist_ok=True)
    stack = Stack(options, Console(io.StringIO()))
    stack.client = client
    return stack


class _Storage(SimpleNamespace):
    pass


class FakeLocalStorage:
    """``client.import_storage.local`` whose first syncs fail like a busy SQLite."""

    def __init__(self, failures: int, traceback: str):
        self.failures = failures
        self.traceback = traceback
        self.syncs = 0

    def list(self, project):
        return [_Storage(id=3, path=self.path)]

    def sync(self, id):
        self.syncs += 1

    def get(self, id):
        if self.syncs <= self.failures:
            return _Storage(status="failed", traceback=self.traceback)
        return _Storage(status="completed", traceback=None)


def _storage_client(storage):
    return SimpleNamespace(
        import_storage=SimpleNamespace(local=storage),
        projects=SimpleNamespace(get=lambda id: SimpleNamespace(task_number=30)),
    )


LOCKED = "Traceback …\ndjango.db.utils.OperationalError: database is locked"


def test_a_busy_database_during_the_sync_is_tried_again(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "SYNC_BACKOFF_SECONDS", 0.01)
    storage = FakeLocalStorage(failures=2, traceback=LOCKED)
    storage.path = str(tmp_path / "images")
    stack = _stack_for(tmp_path, _storage_client(storage))

    assert stack.ensure_storage(1, tmp_path / "images") == (0, 30)
    assert storage.syncs == 3
    assert "database is busy" in stack.console.stream.getvalue()


def test_a_database_busy_for_long_says_to_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "SYNC_BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(sys, "argv", ["run.py", "up", "/my photos"])
    storage = FakeLocalStorage(failures=99, traceback=LOCKED)
    storage.path = str(tmp_path / "images")
    stack = _stack_for(tmp_path, _storage_client(storage))

    with pytest.raises(RunError) as raised:
        stack.ensure_storage(1, tmp_path / "images")
    assert "Label Studio's database was busy" in str(raised.value)
    assert "rerun ./scripts/up.sh '/my photos'" in str(raised.value)
    assert storage.syncs == run_module.SYNC_ATTEMPTS


def test_another_sync_failure_shows_its_reason(tmp_path):
    storage = FakeLocalStorage(
        failures=1, traceback="Traceback …\nValueError: bad path"
    )
    storage.path = str(tmp_path / "images")
    stack = _stack_for(tmp_path, _storage_client(storage))

    with pytest.raises(RunError, match="ValueError: bad path") as raised:
        stack.ensure_storage(1, tmp_path / "images")
    assert storage.syncs == 1
    assert str(tmp_path / "logs" / "label-studio.log") in str(raised.value)


# A server whose listening socket outlives the recorded PID for a moment, as a
# threaded server's does when its main thread is gone before its other threads: here
# a forked child in the same process group keeps it 1.5 s after SIGTERM.
LINGERING_SERVER = """
import os, signal, socket, sys, time
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
if os.fork() == 0:
    signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), os._exit(0)))
    while True:
        time.sleep(1)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _lingering_server(port):
    process = subprocess.Popen(
        [sys.executable, "-c", LINGERING_SERVER, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_our_own_service_is_restarted_on_its_port(tmp_path):
    port = free_port()
    server = _lingering_server(port)
    try:
        stack = _stack_for(tmp_path)
        stack.state.record("plugin", server.pid, port=port)
        entry = stack.state.running("plugin")

        stack._stop_ours("plugin", entry, "the bulk-shift service")
        server.wait(timeout=5)

        # The port is free again: the restart may take it.
        stack._refuse_taken(port, "the bulk-shift service", "--port-plugin")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_a_port_held_by_our_own_process_is_not_another_program(tmp_path):
    port = free_port()
    server = _lingering_server(port)
    try:
        stack = _stack_for(tmp_path)
        stack.state.record("plugin", server.pid, port=port)
        with pytest.raises(RunError) as raised:
            stack._refuse_taken(port, "the bulk-shift service", "--port-plugin")
        assert "Bulk Shift's own plugin" in str(raised.value)
        assert "another program" not in str(raised.value)

        stack.state.services.clear()
        with pytest.raises(RunError, match=f"another program \\(pid {server.pid}"):
            stack._refuse_taken(port, "the bulk-shift service", "--port-plugin")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=5)


@pytest.mark.integration
def test_unreadable_images_are_listed_at_the_end(tmp_path, redis_server):
    from ml_backend.jobs import errors_key

    client = redis.Redis.from_url(redis_server)
    project = 9000 + os.getpid() % 1000
    errors = {
        task: f"task {task} (/data/local-files/?d=photos/img%20{task}.png): cannot "
        "identify image file"
        for task in range(1, 8)
    }
    client.delete(errors_key(project))
    client.hset(errors_key(project), mapping=errors)
    stack = _stack_for(tmp_path)
    stack.redis_url = redis_server
    stack.label_studio = SimpleNamespace(document_root=tmp_path / "files")

    assert report_unreadable(stack, project, stack.console) == 7

    shown = stack.console.stream.getvalue()
    full_list = tmp_path / "logs" / f"unreadable-images-project-{project}.txt"
    assert "7 images could not be read" in shown
    assert f"{tmp_path}/files/photos/img 1.png" in shown
    assert "… and 2 more" in shown and "img 7.png" not in shown
    assert f"full list: {full_list}" in shown
    assert len(full_list.read_text().splitlines()) == 7
    client.delete(errors_key(project))


def test_help_installs_nothing(tmp_path):
    venv = tmp_path / "no-venv"
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "up.sh"), "--help"],
        env=dict(os.environ, BULKSHIFT_VENV=str(venv)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0
    assert "Usage: ./scripts/up.sh [IMAGE_DIR]" in result.stdout
    assert "--port-plugin" in result.stdout and "--timeout" in result.stdout
    assert not venv.exists()
    assert "Installing" not in result.stderr
