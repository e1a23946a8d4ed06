"""The service after a first user's findings: naming merges, the label set after
naming, one card per route, background naming, purity, API key files.

Real Redis (the ``redis_server`` fixture); Label Studio is an in-memory stand-in that
answers the calls the service makes, so these run in seconds. The same behaviour
against a real Label Studio is in ``tests/integration/test_plugin_service.py``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.app import create_app
from bulk_shift_plugin.config import ConfigError, read_api_key
from bulk_shift_plugin.errors import NamingError
from bulk_shift_plugin.labelstudio import ChoicesControl, TaskAnnotations
from bulk_shift_plugin.naming import (
    folder_choices,
    naming_label_set,
    resolve_folder_names,
)
from bulk_shift_plugin.service import BulkShiftService
from bulk_shift_plugin.state import TaskState, TaskStore
from bulk_shift_plugin.transactions import Move, ShiftLog, ShiftRecord

CLUSTERS = [
    {"cluster": number, "name": f"Cluster {number + 1:02d}", "tasks": []}
    for number in range(27)
]


# -- merges resolve to the target's final name --------------------------------------


def test_merge_into_a_folder_named_in_the_same_form_takes_that_name():
    # The first user's case: Cluster 10 (number 9) named "Bag", Cluster 16 (number
    # 15) merged into Cluster 10, both in one submit; the old dropdown sent the
    # folder's own name.
    for merge in ("Cluster 10", "cluster:9"):
        names = resolve_folder_names(CLUSTERS, {9: "Bag", 15: merge})

        assert names == {9: "Bag", 15: "Bag"}


def test_merge_chains_resolve_and_cycles_are_refused_with_the_folders_named():
    chain = resolve_folder_names(CLUSTERS, {0: "cluster:1", 1: "cluster:2", 2: "Shoe"})
    assert chain == {0: "Shoe", 1: "Shoe", 2: "Shoe"}

    with pytest.raises(NamingError, match="Cluster 01 -> Cluster 02 -> Cluster 01"):
        resolve_folder_names(CLUSTERS, {0: "cluster:1", 1: "cluster:0"})
    with pytest.raises(NamingError, match="in a circle"):
        resolve_folder_names(CLUSTERS, {4: "cluster:4"})


def test_merge_into_an_unnamed_folder_needs_a_name_unless_named_before():
    with pytest.raises(NamingError, match="Cluster 03 has no name yet"):
        resolve_folder_names(CLUSTERS, {0: "cluster:2"})

    assert resolve_folder_names(CLUSTERS, {0: "cluster:2"}, {"2": "Sock"}) == {
        0: "Sock"
    }
    assert resolve_folder_names(CLUSTERS, {0: "label:Sandal"}) == {0: "Sandal"}


def test_form_choice_prefers_the_merge_and_skips_blank_folders():
    choices = folder_choices({1: "Bag", 2: "typed", 3: ""}, {2: "cluster:1", 3: ""})

    assert choices == {1: "Bag", 2: "cluster:1"}


def test_label_set_after_naming_drops_cluster_names_and_keeps_a_persons_labels():
    configured = [f"Cluster {n:02d}" for n in range(1, 4)] + ["Sandal"]

    first = naming_label_set(
        configured, {0: "Bag", 1: "Shoe", 2: "Bag"}, configured[:3]
    )
    assert first == ["Bag", "Shoe", "Sandal"]

    # Renaming Bag -> Handbag retires Bag, unless a task still carries it.
    renamed = {0: "Handbag", 1: "Shoe", 2: "Handbag"}
    assert naming_label_set(first, renamed, configured[:3], {"Bag"}) == [
        "Handbag",
        "Shoe",
        "Sandal",
    ]
    assert naming_label_set(first, renamed, configured[:3], {"Bag"}, {"Bag"}) == [
        "Handbag",
        "Shoe",
        "Bag",
        "Sandal",
    ]


# -- an in-memory Label Studio -------------------------------------------------------


class MemoryLabelStudio:
    """The gateway calls the service makes, on dictionaries (one project)."""

    def __init__(self, labels, tasks, delay=0.0):
        self.labels = list(labels)
        self.annotations: dict[int, list[tuple[int, str]]] = {t: [] for t in tasks}
        self.predictions: dict[str, dict[int, str]] = {}
        self.next_id = 1000
        self.delay = delay
        self.config_history: list[list[str]] = []

    def choices_control(self, project, refresh=False):
        return ChoicesControl("label", "image", list(self.labels))

    def set_label_names(self, project, names):
        used = {label for entries in self.annotations.values() for _, label in entries}
        missing = used - set(names)
        if missing:  # what Label Studio says for a label annotations still use
            raise AssertionError(f"labels still used in annotations: {missing}")
        self.labels = list(names)
        self.config_history.append(list(names))
        return self.choices_control(project)

    def task_annotations(self, project, task_ids=None):
        ids = self.annotations if task_ids is None else task_ids
        return {
            int(t): TaskAnnotations(int(t), list(self.annotations[int(t)])) for t in ids
        }

    def delete_annotations(self, project, task_ids):
        time.sleep(self.delay)
        for task in task_ids:
            self.annotations[task] = []

    def import_label_predictions(self, project, labels, model_version):
        for label in labels.values():
            assert label in self.labels, f"{label!r} is not a choice"
        self.predictions.setdefault(model_version, {}).update(labels)

    def predictions_to_annotations(self, project, task_ids, model_version):
        for task in task_ids:
            self.next_id += 1
            label = self.predictions[model_version][task]
            self.annotations[task].append((self.next_id, label))

    def delete_model_version(self, project, model_version):
        return len(self.predictions.pop(model_version, {}))


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture
def folders(redis_client):
    """A project of 3 folders (tasks 1-4, 5-6, 7-8) with the backend's labels."""
    pid = int(uuid.uuid4().int % 10**8) + 2 * 10**8
    clusters = [
        {"cluster": 0, "name": "Cluster 01", "tasks": [1, 2, 3, 4]},
        {"cluster": 1, "name": "Cluster 02", "tasks": [5, 6]},
        {"cluster": 2, "name": "Cluster 03", "tasks": [7, 8]},
    ]
    names = [c["name"] for c in clusters]
    redis_client.set(
        keys.clusters(pid), json.dumps({"model_version": "v", "clusters": clusters})
    )
    redis_client.set(keys.labels(pid), json.dumps(names))
    studio = MemoryLabelStudio(names + ["Sandal"], range(1, 9))
    service = BulkShiftService(redis_client, studio, background_cleanup=False)
    yield pid, service, studio
    for key in redis_client.scan_iter(keys.project_key(pid, "*")):
        redis_client.delete(key)


def test_naming_with_a_merge_labels_the_merged_folder_with_the_target_name(folders):
    pid, service, studio = folders

    record = service.name_clusters(pid, {0: "Bag", 1: "Shoe", 2: "Cluster 01"})

    assert len(record.moves) == 8
    states = TaskStore(service.redis).get_many(pid, range(1, 9))
    assert {t: states[t].label for t in (1, 7, 8)} == {1: "Bag", 7: "Bag", 8: "Bag"}
    assert states[5].label == "Shoe"
    # Only the chosen names and the label a person added stay; names come first.
    assert studio.labels == ["Bag", "Shoe", "Sandal"]
    assert json.loads(service.redis.get(keys.labels(pid))) == studio.labels
    assert service.folder_names(pid) == {"0": "Bag", "1": "Shoe", "2": "Bag"}


def test_renaming_keeps_shifted_and_confirmed_tasks_and_retires_the_old_name(folders):
    pid, service, studio = folders
    service.name_clusters(pid, {0: "Bag", 1: "Shoe", 2: "Sock"})
    store = TaskStore(service.redis)
    store.set(pid, 2, TaskState("Bag", "person", annotation_id=1))
    store.set(pid, 3, TaskState("Shoe", "shift", shift_id="s1"))

    record = service.name_clusters(pid, {0: "Handbag"})

    # Tasks 1 and 4 came from the naming; 2 is a person's, 3 a shift's.
    assert sorted(record.task_ids) == [1, 4]
    assert store.get(pid, 2).label == "Bag" and store.get(pid, 3).label == "Shoe"
    assert studio.labels == ["Handbag", "Shoe", "Sock", "Bag", "Sandal"]


def test_background_naming_reports_progress_and_the_page_shows_the_names(folders):
    pid, service, studio = folders
    studio.delay = 0.3
    service.applier.chunk_size = 3
    client = create_app(service, "s").test_client()

    answer = client.post(
        f"/projects/{pid}/naming",
        data={"name_0": "Bag", "name_1": "Shoe", "merge_2": "cluster:0"},
    )

    assert answer.status_code == 303
    assert answer.headers["Location"].endswith(f"/projects/{pid}/naming/progress")
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = client.get(f"/projects/{pid}/naming/status").get_json()
        seen.add((status["status"], status["done"]))
        if status["status"] != "running":
            break
        time.sleep(0.05)
    assert status["status"] == "done" and status["moved"] == 8
    assert ("running", 3) in seen  # a chunk of 3 of the 8 was reported
    page = client.get(f"/projects/{pid}/naming").get_data(as_text=True)
    assert 'id="naming-state"' in page and "were named on" in page
    assert 'name="name_0"' in page and 'value="Bag"' in page
    progress = client.get(f"/projects/{pid}/naming/progress").get_data(as_text=True)
    progress = " ".join(progress.split())
    assert "Done: 3 folders named; 8 images labeled." in progress


def test_a_cycle_in_the_form_is_shown_on_the_page_and_changes_nothing(folders):
    pid, service, studio = folders
    client = create_app(service, "s").test_client()

    answer = client.post(
        f"/projects/{pid}/naming",
        data={"merge_0": "cluster:1", "merge_1": "cluster:0", "name_2": "Sock"},
    )

    assert answer.status_code == 400
    page = answer.get_data(as_text=True)
    assert "in a circle: Cluster 01 -&gt; Cluster 02 -&gt; Cluster 01" in page
    assert 'value="Sock"' in page  # what the person typed is kept
    assert service.naming_status(pid) is None and studio.config_history == []


def test_merge_dropdown_offers_folders_and_their_names(folders):
    pid, service, _studio = folders
    service.name_clusters(pid, {1: "Shoe"})

    page = create_app(service, "s").test_client().get(f"/projects/{pid}/naming")
    text = page.get_data(as_text=True)

    assert 'value="cluster:1"' in text and "Cluster 02 (Shoe)" in text
    assert 'value="label:Sandal"' in text
    assert 'value="label:Cluster 01"' not in text


# -- one pending card per route ------------------------------------------------------


@pytest.fixture
def route_project(redis_client):
    """Labels A, B; tasks 1-5 in A, each with B as its 2nd recommendation."""
    pid = int(uuid.uuid4().int % 10**8) + 3 * 10**8
    redis_client.set(keys.labels(pid), json.dumps(["A", "B"]))
    redis_client.hset(
        keys.recommendations(pid),
        mapping={
            str(t): json.dumps(
                {"labels": ["A", "B"], "probabilities": [0.9 - t / 20, 0.1 + t / 20]}
            )
            for t in range(1, 6)
        },
    )
    TaskStore(redis_client).set_many(
        pid, {t: TaskState("A", "cluster", shift_id="naming1") for t in range(1, 6)}
    )
    yield pid
    for key in redis_client.scan_iter(keys.project_key(pid, "*")):
        redis_client.delete(key)


def test_a_second_move_on_the_same_route_replaces_the_pending_card(
    redis_client, route_project
):
    pid = route_project
    studio = MemoryLabelStudio(["A", "B"], range(1, 6))
    service = BulkShiftService(redis_client, studio)

    first = service.person_labeled(pid, 1, "B", annotation_id=11)
    second = service.person_labeled(pid, 2, "B", annotation_id=12)

    assert first["members"] == [5, 4, 3, 2]
    assert second["members"] == [5, 4, 3]
    assert [p["id"] for p in service.proposals(pid)] == [second["id"]]
    page = create_app(service, "s").test_client().get(f"/projects/{pid}/review")
    text = page.get_data(as_text=True)
    assert text.count('class="card proposal"') == 1
    # Move and Reject above the images and below; "button.accept" stays one button.
    assert text.count('class="accept"') == 1 and text.count('class="accept-top"') == 1
    assert text.index('class="accept-top"') < text.index('alt="task 5"')
    assert text.index('class="reject-top"') < text.index('alt="task 5"')


def test_reject_redirects_with_a_confirmation(redis_client, route_project):
    pid = route_project
    service = BulkShiftService(redis_client, MemoryLabelStudio(["A", "B"], []))
    proposal = service.person_labeled(pid, 1, "B", annotation_id=11)
    client = create_app(service, "s").test_client()

    answer = client.post(
        f"/projects/{pid}/proposals/{proposal['id']}/reject", follow_redirects=True
    )

    assert "Rejected: 4 images stay in A (not moved to B)." in answer.get_data(
        as_text=True
    )


# -- purity --------------------------------------------------------------------------


def shift_of(redis_client, project, n_members):
    return ShiftLog(redis_client).create(
        ShiftRecord(
            id=uuid.uuid4().hex[:12],
            project=project,
            kind="shift",
            source="Sneaker",
            destination="Sandal",
            status="applied",
            moves=[
                Move(t, "Sandal", "shift", "Sneaker", "cluster", shift_id=None)
                for t in range(1, n_members + 1)
            ],
        )
    )


def test_one_correction_of_372_is_shown_as_99_7_percent_not_100(
    redis_client, route_project
):
    record = shift_of(redis_client, route_project, 372)
    service = BulkShiftService(redis_client, MemoryLabelStudio(["A", "B"], []))
    TaskStore(redis_client).set(
        route_project, 32, TaskState("Sandal", "shift", shift_id=record.id)
    )

    service.person_labeled(route_project, 32, "Sneaker", annotation_id=5)

    stored = service.log.get(record.id)
    assert stored.purity == pytest.approx(371 / 372)
    assert stored.purity_text == "99.7% (1 of 372 corrected)"
    page = (
        create_app(service, "s").test_client().get(f"/projects/{route_project}/shifts")
    )
    assert "99.7% (1 of 372 corrected)" in page.get_data(as_text=True)


def test_parallel_corrections_all_count(redis_client, route_project):
    record = shift_of(redis_client, route_project, 10)
    log = ShiftLog(redis_client)
    threads = [
        threading.Thread(target=log.record_correction, args=(record.id, task))
        for task in range(1, 9)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert log.get(record.id).purity == pytest.approx(2 / 10)


def test_a_late_echo_of_our_own_write_keeps_the_shift_on_the_task(
    redis_client, route_project
):
    from bulk_shift_plugin.webhooks import WebhookReceiver

    pid = route_project
    service = BulkShiftService(redis_client, MemoryLabelStudio(["A", "B"], []))
    TaskStore(redis_client).set(pid, 3, TaskState("B", "shift", 77, shift_id="s9"))
    event = {
        "action": "ANNOTATIONS_CREATED",
        "project": {"id": pid},
        "annotation": [
            {
                "id": 77,
                "task": 3,
                "result": [
                    {
                        "type": "choices",
                        "from_name": "label",
                        "value": {"choices": ["B"]},
                    }
                ],
            }
        ],
    }

    WebhookReceiver(service, redis_client).receive(
        json.dumps(event).encode(), {"X-Bulkshift-Secret": "s"}, "s"
    )

    state = TaskStore(redis_client).get(pid, 3)
    assert (state.origin, state.shift_id) == ("shift", "s9")


# -- API key files -------------------------------------------------------------------


def test_api_key_file_may_be_the_stacks_credentials_json_or_the_bare_key(tmp_path):
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"username": "u", "token": "abc123"}, indent=2))
    bare = tmp_path / "token"
    bare.write_text("abc123\n")

    assert read_api_key(credentials) == read_api_key(bare) == "abc123"

    credentials.write_text(json.dumps({"username": "u"}))
    with pytest.raises(ConfigError, match='without a "token" entry'):
        read_api_key(credentials)
    bare.write_text("user abc123")
    with pytest.raises(ConfigError, match="more than one word"):
        read_api_key(bare)
