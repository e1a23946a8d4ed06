"""The one command: ``python -m bulkshift.stack.run up|down`` on a small image folder.

It starts its own stack (Redis, Label Studio, the ML backend and its worker, the
bulk-shift service) on free ports under a temporary data directory, exactly as
``scripts/up.sh`` does, then checks what a person would find in Label Studio, that a
second ``up`` reuses everything, and that ``down`` stops every process.
"""

import json
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from label_studio_sdk import LabelStudio

from bulkshift.datasets import build_fashion_mnist
from bulkshift.stack import free_port
from bulkshift.stack.run import (
    SERVICES,
    StackState,
    _link_under,
    _title_for,
    process_start_time,
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
    data_dir = base / "var"
    up = [
        "up",
        str(images.directory),
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
    assert first["n_tasks"] == n_images
    assert first["backend_version"] == first["model_version"]
    assert first["model_version"].endswith("-clusters")
    assert len(first["predictions"]) == n_images
    cluster_names = {c["name"] for c in first["clusters"]["clusters"]}
    for prediction in first["predictions"].values():
        (choice,) = prediction["result"][0]["value"]["choices"]
        assert choice in cluster_names
    assert first["n_feature_keys"] == n_images
    assert first["n_backends"] == 1 and first["n_storages"] == 1
    # The folder is linked under the document root, and read from disk.
    worker_log = (stack["data_dir"] / "logs" / "ml-worker.log").read_text()
    assert f"{n_images} images read from disk, 0 downloaded" in worker_log


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
    # The password is shown once, when the account is created, and never again.
    assert stack["snapshot_after_first"]["password"] not in second
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
    assert worker_log.count("pushed") == 1


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
