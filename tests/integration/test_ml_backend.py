"""The ML backend against a real Label Studio 1.23 and a real Redis.

Also checks the stack fixtures themselves (servers answer, images land under the
document root). Slow: the session's Label Studio takes ~50 s to start the first time.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from bulkshift.stack.backend import BackendServer, BackendWorker
from bulkshift.store import BackendStore
from ml_backend import jobs

pytestmark = pytest.mark.integration

BASIC_AUTH = ("ls-backend", "a-test-password-1234")
PERSON_LABELS = {
    "red-disc": "disc",
    "green-square": "square",
    "blue-stripes": "stripes",
}
LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="single">
    <Choice value="disc"/><Choice value="square"/><Choice value="stripes"/>
  </Choices>
</View>
"""


def wait_for(condition, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- the fixtures themselves -------------------------------------------------------


def test_redis_server_answers(redis_server):
    client = redis.Redis.from_url(redis_server)
    client.set("bulkshift:test:ping", "pong")
    assert client.get("bulkshift:test:ping") == b"pong"
    client.delete("bulkshift:test:ping")


def test_label_studio_health_and_sdk(label_studio, ls_client):
    with urllib.request.urlopen(f"{label_studio.url}/health", timeout=5) as response:
        assert response.status == 200
    assert ls_client.users.whoami().email == label_studio.username
    project = ls_client.projects.create(title="fixture check")
    assert project.id in [listed.id for listed in ls_client.projects.list()]
    ls_client.projects.delete(project.id)


def test_image_set_under_document_root(label_studio, image_set):
    assert len(image_set.paths) == 30
    assert image_set.directory.parent == label_studio.document_root
    assert Image.open(image_set.paths[0]).size == (64, 64)
    broken = image_set.make_broken()
    with pytest.raises(OSError):
        Image.open(broken).load()


# -- the backend -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(redis_server, label_studio, tmp_path_factory):
    """The backend's HTTP server and worker as real processes, with basic auth,
    reading Label Studio's local files from its document root."""
    logs = tmp_path_factory.mktemp("backend")
    environment = {
        "REDIS_URL": redis_server,
        "BASIC_AUTH_USER": BASIC_AUTH[0],
        "BASIC_AUTH_PASS": BASIC_AUTH[1],
        "BULKSHIFT_EXTRACTOR": "pixels",
        "BULKSHIFT_N_CLUSTERS": "3",
        "BULKSHIFT_COALESCE_SECONDS": "0.5",
        "BULKSHIFT_QUEUE": f"bulkshift-test-{int(time.time())}",
        # The token comes from /setup, as when a person connects the model.
        "LABEL_STUDIO_API_KEY": "",
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root or ""),
    }
    server = BackendServer(logs / "backend.log", environment).start()
    worker = BackendWorker(logs / "worker.log", environment).start()
    try:
        yield server
    finally:
        worker.stop()
        server.stop()
        for log in ("backend.log", "worker.log"):
            print(f"--- {log}\n{(logs / log).read_text()[-4000:]}")


@pytest.fixture(scope="module")
def sorted_project(label_studio, ls_client, backend, redis_server, tmp_path_factory):
    """A project of 30 generated images + 1 broken one, connected to the backend,
    after its first (folders) refresh."""
    from conftest import make_image_set

    assert label_studio.document_root is not None, "set BULKSHIFT_TEST_LS_DOCUMENT_ROOT"
    images = make_image_set(
        label_studio.document_root / f"backend-{int(time.time() * 1000)}", seed=3
    )
    broken = images.make_broken("zz-broken.png")

    project = ls_client.projects.create(title="backend test", label_config=LABEL_CONFIG)
    storage = ls_client.import_storage.local.create(
        project=project.id,
        path=str(images.directory),
        use_blob_urls=True,
        regex_filter=r".*\.png",
    )
    ls_client.import_storage.local.sync(id=storage.id)
    tasks = list(ls_client.tasks.list(project=project.id, fields="all"))
    assert len(tasks) == 31

    group_of_task, broken_task = {}, None
    for task in tasks:
        name = task.data["image"].rsplit("/", 1)[-1]
        if name == broken.name:
            broken_task = task.id
        else:
            group_of_task[task.id] = name.rsplit("-", 1)[0]

    ls_client.ml.create(
        project=project.id,
        url=backend.url,
        title="Bulk Shift",
        auth_method="BASIC_AUTH",
        basic_auth_user=BASIC_AUTH[0],
        basic_auth_pass=BASIC_AUTH[1],
        is_interactive=False,
    )
    store = BackendStore(redis.Redis.from_url(redis_server))
    wait_for(lambda: store.model_version(project.id), what="the first refresh")
    return {
        "id": project.id,
        "group_of_task": group_of_task,
        "broken_task": broken_task,
        "store": store,
    }


def predictions_of(ls_client, project: int, model_version: str) -> dict[int, dict]:
    found = {}
    for task in ls_client.tasks.list(project=project, fields="all"):
        for prediction in task.predictions or []:
            prediction = (
                prediction if isinstance(prediction, dict) else prediction.dict()
            )
            if prediction.get("model_version") == model_version:
                found[task.id] = prediction
    return found


def test_pre_annotations_are_clusters(ls_client, sorted_project):
    project, store = sorted_project["id"], sorted_project["store"]
    version = store.model_version(project)
    assert version.endswith("-clusters")
    assert ls_client.projects.get(id=project).model_version == version

    clusters = store.clusters(project)["clusters"]
    assert [c["name"] for c in clusters] == ["Cluster 01", "Cluster 02", "Cluster 03"]
    clustered = [task for c in clusters for task in c["tasks"]]
    assert sorted(clustered) == sorted(sorted_project["group_of_task"])
    # The three groups differ in hue, so each folder holds one group only.
    for cluster in clusters:
        groups = {sorted_project["group_of_task"][task] for task in cluster["tasks"]}
        assert len(groups) == 1, cluster

    predictions = predictions_of(ls_client, project, version)
    assert set(predictions) == set(sorted_project["group_of_task"])
    for cluster in clusters:
        for task in cluster["tasks"]:
            assert predictions[task]["result"][0]["value"]["choices"] == [
                cluster["name"]
            ]
    config = ls_client.projects.get(id=project).label_config
    assert "Cluster 03" in config and "bulkshift_recommended" in config


def test_local_files_are_read_from_disk(backend, label_studio, sorted_project):
    if label_studio.document_root is None:
        pytest.skip("Label Studio's document root is unknown")
    worker_log = (backend.log_path.parent / "worker.log").read_text()
    project = sorted_project["id"]
    # All 31 files, the broken one too: it is read, then fails to decode.
    assert f"project {project}: 31 images read from disk, 0 downloaded" in worker_log


def test_broken_image_is_an_error_for_its_task_only(sorted_project):
    project, store = sorted_project["id"], sorted_project["store"]
    errors = store.redis.hgetall(jobs.errors_key(project))
    assert list(errors) == [str(sorted_project["broken_task"]).encode()]
    assert b"zz-broken.png" in errors[str(sorted_project["broken_task"]).encode()]


def test_labels_retrain_and_rank_by_uncertainty(ls_client, sorted_project):
    project, store = sorted_project["id"], sorted_project["store"]
    first_version = store.model_version(project)

    # Two tasks of each group get a person's label; each creation fires a webhook.
    labeled = {}
    for group, label in PERSON_LABELS.items():
        tasks = [t for t, g in sorted_project["group_of_task"].items() if g == group][
            :2
        ]
        for task in tasks:
            ls_client.annotations.create(
                id=task,
                result=[
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
            )
            labeled[task] = label

    version = wait_for(
        lambda: (
            (v := store.model_version(project)) != first_version
            and v.endswith("-lr")
            and not store.redis.exists(jobs.pending_key(project))
            and v
        ),
        what="a retrain after the labels",
    )
    assert ls_client.projects.get(id=project).model_version == version

    recommendations = store.recommendations(project)
    assert set(recommendations) == set(sorted_project["group_of_task"])
    for task, label in labeled.items():
        assert recommendations[task].labels[0] == label
    for recommendation in recommendations.values():
        assert recommendation.model_version == version
        assert len(recommendation.labels) == len(set(recommendation.labels)) <= 10
        assert recommendation.probabilities == sorted(
            recommendation.probabilities, reverse=True
        )

    # Least confidence: score = p(best label); ascending score = least certain first.
    predictions = predictions_of(ls_client, project, version)
    assert set(predictions) == set(sorted_project["group_of_task"])
    by_score = sorted(predictions, key=lambda task: predictions[task]["score"])
    best = [recommendations[task].probabilities[0] for task in by_score]
    assert best == sorted(best)
    assert predictions[by_score[0]]["score"] == pytest.approx(best[0], abs=1e-5)
    assert best[0] < best[-1]
    for task, prediction in predictions.items():
        choice = prediction["result"][0]["value"]["choices"][0]
        assert choice == recommendations[task].labels[0]
        shown = prediction["result"][1]["value"]["text"][0]
        assert shown.startswith(f"1. {choice} ")

    # The previous version's predictions were removed.
    assert predictions_of(ls_client, project, first_version) == {}


def test_a_burst_of_events_makes_one_retrain(backend, sorted_project):
    project, store = sorted_project["id"], sorted_project["store"]
    counter_before = int(store.redis.get(jobs.version_counter_key(project)))
    log = Path(backend.log_path).with_name("worker.log")
    skips_before = log.read_text().count("nothing recomputed")
    answers = [
        httpx.post(
            f"{backend.url}/webhook",
            auth=BASIC_AUTH,
            json={"action": "START_TRAINING", "project": {"id": project}},
        ).json()["status"]
        for _ in range(5)
    ]
    assert answers[0] == "queued" and set(answers[1:]) == {"coalesced"}
    log = Path(backend.log_path).with_name("worker.log")
    wait_for(
        lambda: log.read_text().count("nothing recomputed") > skips_before,
        what="the coalesced refresh",
    )
    time.sleep(2)
    # One refresh ran, and as nothing changed since the last one it made no new
    # model version.
    assert log.read_text().count("nothing recomputed") == skips_before + 1
    assert int(store.redis.get(jobs.version_counter_key(project))) == counter_before


def test_no_refresh_while_a_shift_writes(backend, sorted_project):
    from bulkshift.store import in_flight_key

    project, store = sorted_project["id"], sorted_project["store"]
    log = Path(backend.log_path).with_name("worker.log")
    skips_before = log.read_text().count("nothing recomputed")
    store.redis.sadd(in_flight_key(project), 1, 2, 3)
    try:
        answer = httpx.post(
            f"{backend.url}/webhook",
            auth=BASIC_AUTH,
            json={"action": "ANNOTATIONS_CREATED", "project": {"id": project}},
        ).json()["status"]
        assert answer == "queued"
        time.sleep(4)
        assert log.read_text().count("nothing recomputed") == skips_before
        assert "the refresh waits until it is done" in log.read_text()
        # Events meanwhile join the waiting refresh.
        again = httpx.post(
            f"{backend.url}/webhook",
            auth=BASIC_AUTH,
            json={"action": "ANNOTATION_CREATED", "project": {"id": project}},
        ).json()["status"]
        assert again == "coalesced"
    finally:
        store.redis.delete(in_flight_key(project))
    wait_for(
        lambda: log.read_text().count("nothing recomputed") > skips_before,
        what="the refresh after the shift",
    )


def test_unauthenticated_requests_are_refused(backend):
    for method, path in (
        ("GET", "/health"),
        ("POST", "/webhook"),
        ("POST", "/predict"),
        ("POST", "/setup"),
    ):
        response = httpx.request(method, backend.url + path, json={"action": "X"})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = httpx.get(backend.url + "/health", auth=(BASIC_AUTH[0], "wrong"))
    assert wrong.status_code == 401
    assert httpx.get(backend.url + "/health", auth=BASIC_AUTH).status_code == 200


def test_bad_requests_get_no_internals(backend):
    response = httpx.post(
        backend.url + "/setup",
        auth=BASIC_AUTH,
        json={
            "project": "7.1700000000",
            "schema": "<View><Text name='t'/></View>",
            "access_token": "secret-token-value",
            "hostname": "http://127.0.0.1:1",
        },
    )
    assert response.status_code == 400
    assert "Image" in response.json()["detail"]
    for answer in (
        response,
        httpx.post(backend.url + "/predict", auth=BASIC_AUTH, content=b"{not json"),
        httpx.post(
            backend.url + "/webhook",
            auth=BASIC_AUTH,
            json={"action": "ANNOTATION_CREATED"},
        ),
    ):
        assert answer.status_code == 400
        assert "Traceback" not in answer.text and "secret-token" not in answer.text
