"""The ML backend's protocol handling, on payloads recorded from Label Studio 1.23.2.

The JSON files in ``tests/fixtures/ls_payloads`` were recorded from a real Label
Studio 1.23.2 sending ``/setup``, ``/predict`` and webhook events to a recording
server (tokens replaced by ``<redacted>``). The app tests use a real Redis.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import redis
from PIL import Image

from bulkshift.store import BackendStore
from ml_backend import features as backend_features
from ml_backend import jobs, protocol, training
from ml_backend.config import ConfigurationError, Settings
from ml_backend.images import ImageReader, LocalFiles

PAYLOADS = Path(__file__).parent / "fixtures" / "ls_payloads"
AUTH = ("backend-user", "backend-password")


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


# -- payload parsing -----------------------------------------------------------------


def test_project_id_of_setup_and_predict_is_the_part_before_the_dot():
    assert payload("setup")["project"].startswith("1.")
    assert protocol.project_id(payload("setup")["project"]) == 1
    assert protocol.project_id(payload("predict")["project"]) == 1
    assert protocol.project_id({"id": 7}) == 7
    for bad in (None, "abc", {"title": "x"}, True, "x.1"):
        with pytest.raises(protocol.ProtocolError):
            protocol.project_id(bad)


@pytest.mark.parametrize(
    "name",
    [
        "webhook_annotation_created",
        "webhook_annotation_updated",
        "webhook_annotations_created",
        "webhook_annotations_deleted",
        "webhook_start_training",
    ],
)
def test_every_recorded_training_event_names_its_project(name):
    event = payload(name)
    assert event["action"] in protocol.TRAINING_EVENTS
    assert protocol.webhook_project(event) == 1
    assert protocol.webhook_project({"action": event["action"]}) is None


def test_project_updated_does_not_refresh():
    # The refresh updates the project itself; reacting to that would loop forever.
    assert "PROJECT_UPDATED" not in protocol.REFRESH_EVENTS


def test_labeling_config_of_the_recorded_project():
    interface = protocol.parse_labeling_config(payload("setup")["schema"])
    assert interface.image_name == "image"
    assert interface.image_key == "image"
    assert interface.choices_name == "label"
    assert interface.labels == ["disc", "square", "stripes"]
    assert not interface.has_recommendations


def test_config_without_image_or_choices_is_explained():
    with pytest.raises(protocol.ProtocolError, match="no <Image"):
        protocol.parse_labeling_config("<View><Text name='t' value='$t'/></View>")
    with pytest.raises(protocol.ProtocolError, match='<Choices toName="img">'):
        protocol.parse_labeling_config("<View><Image name='img' value='$i'/></View>")
    with pytest.raises(protocol.ProtocolError, match="not valid XML"):
        protocol.parse_labeling_config("<View>")


def test_labels_and_recommendations_box_are_added_once():
    config = payload("setup")["schema"]
    updated = protocol.with_labels_and_recommendations(config, ["square", "Cluster 01"])
    interface = protocol.parse_labeling_config(updated)
    assert interface.labels == ["disc", "square", "stripes", "Cluster 01"]
    assert interface.has_recommendations
    again = protocol.with_labels_and_recommendations(updated, ["Cluster 01"])
    assert protocol.parse_labeling_config(again) == interface
    assert again.count(protocol.RECOMMENDATIONS_CONTROL) == 1


def test_annotation_labels_of_recorded_events():
    created = payload("webhook_annotation_created")["annotation"]
    updated = payload("webhook_annotation_updated")["annotation"]
    assert protocol.annotation_label(created, "label") == "disc"
    assert protocol.annotation_label(updated, "label") == "square"
    assert protocol.annotation_label(created, "other") is None
    assert protocol.annotation_label(dict(created, was_cancelled=True), "label") is None


def test_task_label_takes_the_latest_annotation():
    task = payload("task_export")[0]
    assert "image" in task["data"]
    older = {
        "id": 1,
        "updated_at": "2026-01-01T00:00:00Z",
        "result": [protocol.choice_region(_interface(), "disc")],
    }
    newer = {
        "id": 2,
        "updated_at": "2026-01-02T00:00:00Z",
        "result": [protocol.choice_region(_interface(), "square")],
    }
    assert (
        protocol.task_label(dict(task, annotations=[newer, older]), "label") == "square"
    )
    assert protocol.task_label(dict(task, annotations=[]), "label") is None


def _interface(with_box: bool = True) -> protocol.LabelingInterface:
    return protocol.LabelingInterface("image", "image", "label", ["a", "b"], with_box)


def test_prediction_carries_choice_score_and_readable_recommendations():
    made = protocol.prediction(
        _interface(), "a", 0.8234567, "v1", (["a", "b"], [0.8234567, 0.1765433])
    )
    assert made["score"] == 0.823457
    assert made["model_version"] == "v1"
    assert made["result"][0] == {
        "from_name": "label",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["a"]},
    }
    assert made["result"][1]["value"]["text"] == ["1. a 82%\n2. b 18%"]
    without_box = protocol.prediction(_interface(False), "a", 0.5, "v1", (["a"], [1.0]))
    assert len(without_box["result"]) == 1


# -- training helpers (hand-computed cases) ------------------------------------------


def test_folder_names_sort_as_numbers():
    assert protocol.folder_name(0, 3) == "Cluster 01"
    assert protocol.folder_name(11, 12) == "Cluster 12"
    assert protocol.folder_name(9, 120) == "Cluster 010"


def test_the_run_command_s_config_offers_the_backend_s_first_folder():
    from bulkshift.stack.run import LABEL_CONFIG

    folders = training.sort_into_folders([7, 8], np.array([[0.0], [5.0]]), 2)
    first = min(cluster["name"] for cluster in folders.clusters)

    assert protocol.parse_labeling_config(LABEL_CONFIG).labels == [first]
    assert protocol.FIRST_FOLDER_NAME == first


def test_folders_list_the_member_nearest_the_centre_first():
    # Two blobs on a line: {0, 1, 2} (centre 1) and {10, 11, 12} (centre 11).
    features = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    task_ids = [100, 101, 102, 103, 104, 105]
    folders = training.sort_into_folders(task_ids, features, n_clusters=2)
    by_members = sorted(folders.clusters, key=lambda c: c["tasks"][0])
    assert [c["tasks"] for c in by_members] == [[101, 100, 102], [104, 103, 105]]
    assert folders.closeness[101] == 1.0 and folders.closeness[100] == 0.0
    assert folders.label_of[100] == folders.label_of[102] != folders.label_of[104]


def test_current_label_is_annotation_then_service_then_folder():
    labels = training.current_labels(
        [1, 2, 3, 4],
        annotated={1: "socks"},
        service={1: "shoes", 2: "hats"},
        folders={1: "Cluster 01", 2: "Cluster 01", 3: "Cluster 02"},
    )
    assert labels == {1: "socks", 2: "hats", 3: "Cluster 02"}


def test_label_names_keep_stored_indices():
    names = training.label_names(["b", "a"], ["a", "c"], ["d", "b", "d"])
    assert names == ["b", "a", "c", "d"]


def test_train_and_rank_scores_are_least_confidence_certainty():
    features = np.array([[0.0], [0.2], [1.8], [2.0], [1.0]])
    labels = np.array([0, 0, 1, 1, -1])  # the middle task is unlabeled
    ranking = training.train_and_rank(features, labels, 3, "lr", "least_confidence")
    assert ranking.probabilities.shape == (5, 3)
    np.testing.assert_allclose(ranking.scores, ranking.probabilities.max(axis=1))
    assert np.argmin(ranking.scores) == 4  # the task between the groups
    assert list(ranking.recommended[0][:2]) == [0, 1]
    assert ranking.recommended[0][2] == 2  # the unused label comes last


# -- settings and the extractor fallback ---------------------------------------------


def test_settings_explain_bad_values(monkeypatch):
    monkeypatch.setenv("BASIC_AUTH_USER", "someone")
    monkeypatch.delenv("BASIC_AUTH_PASS", raising=False)
    with pytest.raises(ConfigurationError, match="BASIC_AUTH_PASS"):
        Settings.from_environment()
    monkeypatch.delenv("BASIC_AUTH_USER")
    monkeypatch.setenv("BULKSHIFT_CLASSIFIER", "forest")
    with pytest.raises(ConfigurationError, match="'forest'.*lr"):
        Settings.from_environment()
    monkeypatch.setenv("BULKSHIFT_CLASSIFIER", "dt")
    monkeypatch.setenv("BULKSHIFT_N_CLUSTERS", "0")
    with pytest.raises(ConfigurationError, match="BULKSHIFT_N_CLUSTERS='0'"):
        Settings.from_environment()


def test_vgg16_without_weights_falls_back_to_pixels_with_one_log_line(
    monkeypatch, caplog, tmp_path
):
    monkeypatch.setenv("BULKSHIFT_VGG16_WEIGHTS", str(tmp_path / "missing.h5"))
    monkeypatch.setattr(backend_features, "_extractors", {})
    with caplog.at_level(logging.WARNING, logger="ml_backend.features"):
        first = backend_features.load_extractor("vgg16")
        second = backend_features.load_extractor("vgg16")
    assert first is second
    assert first.extractor_id.startswith("pixels")
    lines = [r for r in caplog.records if r.name == "ml_backend.features"]
    assert len(lines) == 1 and "BULKSHIFT_VGG16_WEIGHTS" in lines[0].getMessage()


# -- features cache (real Redis) -------------------------------------------------------


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def scratch_redis(url: str) -> redis.Redis:
    """Database 9 of the session's Redis, emptied: other tests use database 0."""
    client = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


def test_features_are_cached_by_content_across_projects(redis_server):
    client = scratch_redis(redis_server)
    store = BackendStore(client)
    files = {"/a.png": _png("red"), "/b.png": _png("blue"), "/bad.png": b"nope"}
    fetched = []

    def fetch(url):
        fetched.append(url)
        if url == "/missing.png":
            raise OSError("HTTP 404")
        return files[url]

    extractor = backend_features.load_extractor("pixels")
    urls = {1: "/a.png", 2: "/b.png", 3: "/bad.png", 4: "/missing.png", 5: "/a.png"}
    first = backend_features.task_features(10, urls, store, extractor, fetch, 8)
    assert first.task_ids == [1, 2, 5]
    assert first.computed == 2  # task 5 has the same bytes as task 1
    assert set(first.errors) == {3, 4} and "HTTP 404" in first.errors[4]
    np.testing.assert_array_equal(first.features[0], first.features[2])

    # Same project again: no download for known URLs; the others are retried.
    fetched.clear()
    again = backend_features.task_features(10, urls, store, extractor, fetch, 8)
    assert sorted(fetched) == ["/bad.png", "/missing.png"] and again.computed == 0

    # Another project with the same images downloads them but computes nothing.
    other = backend_features.task_features(
        11, {7: "/b.png"}, store, extractor, fetch, 8
    )
    assert other.computed == 0
    np.testing.assert_array_equal(other.features[0], first.features[1])


# -- reading images: from Label Studio's document root, several at once ---------------

LS_URL = "http://label-studio:8080"  # as the backend reaches it
PUBLIC_URL = "http://localhost:8080"  # as its task URLs name it (LABEL_STUDIO_HOST)


@pytest.fixture
def document_root(tmp_path):
    """A document root with one image, a link to a folder outside it, and traps.

    ``root/shop/shoe.png`` is inside; ``outside/secret.png`` is not, and is reachable
    only through ``..``, an absolute path, or the link ``root/shop/escape`` that sits
    below the root's top level; ``root/photos`` is a top-level link to ``elsewhere``
    (as ``up`` makes for a folder outside the root).
    """
    root = tmp_path / "root"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "shoe.png").write_bytes(b"shoe from disk")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"secret")
    (root / "shop" / "escape").symlink_to(tmp_path / "outside")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "hat.png").write_bytes(b"hat from disk")
    (root / "photos").symlink_to(tmp_path / "elsewhere")
    return root


def test_local_files_are_read_from_disk_and_anything_else_over_http(document_root):
    downloaded = []

    def download(url):
        downloaded.append(url)
        return b"over http"

    reader = ImageReader(download, LocalFiles(document_root, [LS_URL, PUBLIC_URL]))
    outside = document_root.parent / "outside" / "secret.png"

    assert reader(f"{LS_URL}/data/local-files/?d=shop/shoe.png") == b"shoe from disk"
    assert (
        reader(f"{PUBLIC_URL}/data/local-files/?d=shop/shoe.png") == b"shoe from disk"
    )
    assert reader("/data/local-files/?d=shop%2Fshoe.png") == b"shoe from disk"
    assert reader("/data/local-files/?d=photos/hat.png") == b"hat from disk"
    left_to_http = [
        "/data/local-files/?d=../outside/secret.png",  # traversal
        "/data/local-files/?d=shop/../../outside/secret.png",
        f"/data/local-files/?d={outside}",  # an absolute path
        "/data/local-files/?d=shop/escape/secret.png",  # a link below the top level
        "/data/local-files/?d=shop/missing.png",  # Label Studio answers 404 itself
        "/data/local-files/?d=",
        "http://other-host:8080/data/local-files/?d=shop/shoe.png",
        "/data/upload/1/0a1b-shoe.png",
        "https://images.example/shoe.png",
    ]
    for url in left_to_http:
        assert reader(url) == b"over http", url
    assert downloaded == left_to_http
    assert (reader.from_disk, reader.over_http) == (4, len(left_to_http))


def test_without_a_document_root_everything_is_downloaded(document_root):
    reader = ImageReader(lambda url: b"over http", None)
    assert reader("/data/local-files/?d=shop/shoe.png") == b"over http"
    assert (reader.from_disk, reader.over_http) == (0, 1)


def test_images_are_downloaded_several_at_once_with_errors_per_task(redis_server):
    # Each download waits until four are in flight: one at a time, none would finish.
    in_flight = threading.Barrier(4, timeout=10)
    files = {f"/img-{i}.png": _png((30 * i, 0, 0)) for i in range(8)}

    def download(url):
        try:
            in_flight.wait()
        except threading.BrokenBarrierError:
            raise OSError("downloads ran one at a time") from None
        if url == "/img-5.png":
            raise OSError("HTTP 404")
        return files[url]

    urls = {task: f"/img-{task}.png" for task in range(8)}
    store = BackendStore(scratch_redis(redis_server))
    extractor = backend_features.load_extractor("pixels")
    result = backend_features.task_features(
        12, urls, store, extractor, ImageReader(download, threads=4), 8
    )

    # The reason names the image, so that a person can find it.
    assert result.errors == {5: "/img-5.png: HTTP 404"}
    assert result.task_ids == [0, 1, 2, 3, 4, 6, 7]


def test_settings_read_the_document_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    assert Settings.from_environment().local_files_root == tmp_path
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT")
    assert Settings.from_environment().local_files_root is None


# -- the HTTP app (real Redis, Flask test client) ------------------------------------


@pytest.fixture
def app_client(redis_server):
    from ml_backend.app import create_app

    client = scratch_redis(redis_server)
    settings = Settings(basic_auth=AUTH, queue_name="bulkshift-protocol-test")
    app = create_app(settings, client)
    app.testing = False  # errors must be handled as in production
    return app.test_client(), client


def _auth_headers():
    import base64

    return {
        "Authorization": "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
    }


def test_requests_without_credentials_are_refused(app_client):
    http, _ = app_client
    for method, path in (("get", "/health"), ("post", "/setup"), ("post", "/webhook")):
        response = getattr(http, method)(path, json=payload("setup"))
        assert response.status_code == 401
        assert "WWW-Authenticate" in response.headers
    assert http.get("/health", headers=_auth_headers()).status_code == 200


def test_setup_remembers_the_connection_and_queues_one_refresh(app_client):
    http, client = app_client
    response = http.post("/setup", json=payload("setup"), headers=_auth_headers())
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "bulkshift-initial"}
    assert json.loads(client.get(jobs.CONNECTION_KEY)) == {
        "url": "http://127.0.0.1:18080",
        "token": "<redacted>",
    }
    assert client.llen("rq:queue:bulkshift-protocol-test") == 1
    http.post("/setup", json=payload("setup"), headers=_auth_headers())
    assert client.llen("rq:queue:bulkshift-protocol-test") == 1  # coalesced


def test_recorded_webhooks_coalesce_into_one_job(app_client):
    http, client = app_client
    answers = [
        http.post("/webhook", json=payload(name), headers=_auth_headers()).get_json()
        for name in (
            "webhook_annotation_created",
            "webhook_annotation_updated",
            "webhook_annotations_deleted",
            "webhook_start_training",
        )
    ]
    assert [a["status"] for a in answers] == [
        "queued",
        "coalesced",
        "coalesced",
        "coalesced",
    ]
    assert client.llen("rq:queue:bulkshift-protocol-test") == 1
    ignored = http.post(
        "/webhook",
        json={"action": "PROJECT_UPDATED", "project": {"id": 1}},
        headers=_auth_headers(),
    )
    assert ignored.get_json()["status"] == "ignored"


def test_predict_answers_stored_predictions_and_nothing_for_the_rest(app_client):
    http, client = app_client
    tasks = payload("predict")["tasks"]
    stored = {"result": [], "score": 0.5, "model_version": "bulkshift-0001-lr"}
    client.hset(jobs.predictions_key(1), tasks[0]["id"], json.dumps(stored))
    client.set("bulkshift:project:1:model_version", "bulkshift-0001-lr")
    response = http.post("/predict", json=payload("predict"), headers=_auth_headers())
    body = response.get_json()
    assert body["model_version"] == "bulkshift-0001-lr"
    assert body["results"] == [[stored]] + [[] for _ in tasks[1:]]


def test_errors_send_no_traceback_or_token(app_client, monkeypatch):
    http, _ = app_client

    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(jobs, "remember_connection", explode)
    response = http.post("/setup", json=payload("setup"), headers=_auth_headers())
    assert response.status_code == 500
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    bad = http.post(
        "/predict",
        data=b"{not json",
        headers=_auth_headers(),
        content_type="application/json",
    )
    assert bad.status_code == 400 and "Traceback" not in bad.get_data(as_text=True)


# -- the recommendations box ---------------------------------------------------------


def test_recommendations_box_has_no_empty_input_field():
    config = protocol.with_labels_and_recommendations(payload("setup")["schema"], [])
    root = ElementTree.fromstring(config)
    (box,) = [
        t for t in root.iter("TextArea") if t.get("name") == "bulkshift_recommended"
    ]
    # Label Studio 1.23.2 shows the input field while the box has fewer texts than
    # maxSubmissions: with one text, the recommendations, it shows none.
    assert box.get("maxSubmissions") == "1"
    assert box.get("editable") == "false"
    assert box.get("showSubmitButton") == "false"

    # The input field would still show over an annotation without the text (the
    # service's): hidden by a style for this block only.
    (block,) = [t for t in root.iter("View") if t.get("className")]
    (style,) = block.iter("Style")
    assert f".{block.get('className')} [data-testid=textarea-form]" in style.text
    assert "display: none" in style.text

    # A box made by an earlier version (an empty input field above the list) is
    # replaced.
    old = payload("setup")["schema"].replace(
        "</View>",
        '<Header value="Recommended labels"/><TextArea name="bulkshift_recommended" '
        'toName="image" editable="false" readonly="true" rows="4"/></View>',
    )
    assert not protocol.same_config(old, config)
    fixed = protocol.with_labels_and_recommendations(old, [])
    assert protocol.same_config(fixed, config)
    assert fixed.count("Recommended labels") == 1
    assert protocol.same_config(config, config.replace("><", ">\n  <"))

    made = protocol.prediction(_interface(), "a", 0.5, "v1", (["a"], [1.0]))
    assert made["result"][1]["readonly"] is True


# -- who set a label -----------------------------------------------------------------


def test_without_a_service_every_annotation_is_a_person_s():
    confirmed = training.person_confirmed(
        [1, 2, 3], annotated={1: "a", 2: "b"}, people=set(), service_tracks_tasks=False
    )
    assert confirmed.tolist() == [True, True, False]


def test_with_a_service_only_its_person_origin_counts():
    # Tasks 1 and 2 carry annotations the service wrote while naming the folders;
    # only task 3 was labeled by a person.
    confirmed = training.person_confirmed(
        [1, 2, 3, 4],
        annotated={1: "a", 2: "b", 3: "a"},
        people={3},
        service_tracks_tasks=True,
    )
    assert confirmed.tolist() == [False, False, True, False]


def test_label_set_follows_the_config_and_keeps_names_in_use():
    stored = ["Cluster 01", "Cluster 02", "Cluster 03", "socks"]
    names = training.label_names(
        stored, ["socks", "shoes"], ["socks", "Cluster 02", "shoes"]
    )
    # Cluster 01 and 03 are neither offered nor used any more: dropped.
    assert names == ["Cluster 02", "socks", "shoes"]


# -- refreshes over an in-memory Label Studio ----------------------------------------

NAMED_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="label" toName="image" choice="single"><Choice value="reds"/>
  <Choice value="blues"/></Choices>
</View>"""


class FakeLabelStudio:
    """The gateway calls a refresh makes, over one in-memory project of 6 tasks."""

    url = "http://label-studio.invalid"

    def __init__(self, config: str):
        self.config = config
        self.model_version = None
        self.annotations: dict[int, str] = {}
        self.imports: list[list[dict]] = []
        self.config_writes: list[str] = []
        self.after_tasks = None  # called once the refresh has read the tasks
        self.images = {
            task: _png((200 + task, 0, 0) if task <= 3 else (0, 0, 200 + task))
            for task in range(1, 7)
        }

    def project(self, project):
        return {
            "id": project,
            "label_config": self.config,
            "model_version": self.model_version,
        }

    def tasks(self, project):
        tasks = [
            {
                "id": task,
                "data": {"image": f"/images/{task}.png"},
                "annotations": (
                    [
                        {
                            "id": task,
                            "result": [
                                protocol.choice_region(
                                    protocol.parse_labeling_config(self.config), label
                                )
                            ],
                        }
                    ]
                    if (label := self.annotations.get(task))
                    else []
                ),
            }
            for task in self.images
        ]
        if self.after_tasks:
            self.after_tasks()
        return tasks

    def fetch_image(self, url):
        return self.images[int(url.rsplit("/", 1)[1].split(".")[0])]

    def update_project(self, project, **fields):
        if "label_config" in fields:
            self.config = fields["label_config"]
            self.config_writes.append(self.config)
        if "model_version" in fields:
            self.model_version = fields["model_version"]

    def import_predictions(self, project, predictions):
        self.imports.append(predictions)

    def delete_model_version(self, project, model_version):
        return 0


@pytest.fixture
def refresh(redis_server):
    """``(run, gateway, store)``: run(project) refreshes it over a fake Label Studio."""
    from bulkshift.stack.run import LABEL_CONFIG

    client = scratch_redis(redis_server)
    store = BackendStore(client)
    gateway = FakeLabelStudio(LABEL_CONFIG)
    settings = Settings(extractor="pixels", n_clusters=2, fetch_threads=1)

    def run(project=1):
        return jobs.Refresher(settings, store, gateway).run(project)

    return run, gateway, store


def _name_the_folders(gateway, store, person_task=None, tracked=None):
    """What the bulk-shift service does when folders are named (reds, blues):
    annotations for every task, its task state for ``tracked`` ones (default all;
    fewer while it is still writing)."""
    from bulkshift.store import tasks_key

    gateway.config = NAMED_CONFIG
    for task in gateway.images:
        label = "reds" if task <= 3 else "blues"
        gateway.annotations[task] = label
        origin = "person" if task == person_task else "cluster"
        if tracked is None or task in tracked:
            store.redis.hset(
                tasks_key(1), task, json.dumps({"label": label, "origin": origin})
            )


def test_a_second_refresh_with_nothing_changed_computes_nothing(refresh):
    run, gateway, _ = refresh
    first = run()
    assert first["status"] == "ok" and first["model_version"].endswith("0001-clusters")
    second = run()
    assert second["status"] == "unchanged"
    assert second["model_version"] == first["model_version"]
    assert len(gateway.imports) == 1  # no second push, no second version

    # A new task is a change: the folders are made again.
    gateway.images[7] = _png((0, 250, 0))
    assert run()["model_version"].endswith("0002-clusters")


def test_after_naming_the_label_set_is_the_named_one(refresh, caplog):
    run, gateway, store = refresh
    run()
    assert "Cluster 02" in protocol.parse_labeling_config(gateway.config).labels

    # The service is still writing: it tracks two tasks so far, while Label Studio
    # already has all six annotations. Only task 2 is a person's.
    _name_the_folders(gateway, store, person_task=2, tracked={1, 2})
    with caplog.at_level(logging.INFO, logger="ml_backend.jobs"):
        outcome = run()
    assert outcome["mode"] == "classifier"
    assert store.label_names(1) == ["reds", "blues"]
    assert "trained on 6 labeled tasks (1 by a person), 2 labels" in caplog.text
    # The folder names are not put back into the config.
    assert protocol.parse_labeling_config(gateway.config).labels == ["reds", "blues"]
    recommended = store.recommendation(1, 1).labels
    assert set(recommended) == {"reds", "blues"}


def test_names_removed_from_the_config_during_a_refresh_stay_removed(refresh):
    run, gateway, store = refresh
    run()
    _name_the_folders(gateway, store)
    # The refresh reads a config with the folder names (and without the box, so
    # that it has something to write); the service then renames them while the
    # refresh computes.
    gateway.config = NAMED_CONFIG.replace(
        "</Choices>",
        '<Choice value="Cluster 01"/><Choice value="Cluster 02"/></Choices>',
    )
    gateway.after_tasks = lambda: setattr(
        gateway,
        "config",
        protocol.with_labels_and_recommendations(NAMED_CONFIG, []),
    )
    run()
    assert protocol.parse_labeling_config(gateway.config).labels == ["reds", "blues"]


def test_without_a_service_annotations_are_a_person_s(refresh, caplog):
    run, gateway, _ = refresh
    run()
    gateway.config = NAMED_CONFIG
    gateway.annotations = {1: "reds", 5: "blues"}
    with caplog.at_level(logging.INFO, logger="ml_backend.jobs"):
        run()
    assert "(2 by a person)" in caplog.text


# -- refreshes wait for shifts ---------------------------------------------------------


def test_a_refresh_waits_while_a_shift_writes(redis_server):
    from bulkshift.store import in_flight_key

    client = scratch_redis(redis_server)
    client.sadd(in_flight_key(4), 10, 11)
    timer = threading.Timer(0.6, lambda: client.delete(in_flight_key(4)))
    timer.start()
    try:
        waited = jobs.wait_for_shifts(client, 4, quiet_seconds=0.05)
    finally:
        timer.cancel()
    assert waited >= 0.5
    # Events meanwhile still join this refresh instead of queuing another.
    assert client.exists(jobs.pending_key(4))

    assert jobs.wait_for_shifts(client, 5, quiet_seconds=0.05) == 0.0


def test_a_refresh_waits_for_a_shift_only_so_long(redis_server):
    from bulkshift.store import in_flight_key

    client = scratch_redis(redis_server)
    client.sadd(in_flight_key(4), 10)
    waited = jobs.wait_for_shifts(client, 4, quiet_seconds=0.05, max_seconds=0.3)
    assert 0.2 <= waited < 2.0


def test_setup_queues_nothing_while_a_refresh_runs(app_client):
    http, client = app_client
    client.set(jobs.refresh_lock_key(1), "held")
    http.post("/setup", json=payload("setup"), headers=_auth_headers())
    assert client.llen("rq:queue:bulkshift-protocol-test") == 0
