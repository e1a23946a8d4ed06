"""The service's Redis state: task labels, cached arrays, shift records, webhooks.

These use a real redis-server (the ``redis_server`` fixture) and no Label Studio.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.app import create_app
from bulk_shift_plugin.config import Settings, connect_redis
from bulk_shift_plugin.labelstudio import SECRET_HEADER, ChoicesControl, with_choices
from bulk_shift_plugin.service import AutoApply, BulkShiftService
from bulk_shift_plugin.state import ProjectIndex, TaskState, TaskStore
from bulk_shift_plugin.transactions import Move, ShiftLog, ShiftRecord
from bulkshift import store
from bulkshift.stack.run import process_start_time


class ChoicesOnlyGateway:
    """Answers the one Label Studio question the webhook receiver asks."""

    def choices_control(self, project, refresh=False):
        return ChoicesControl("label", "image", ["A", "B", "C"])


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture
def project(redis_client):
    """A project id of its own, with labels A, B, C and four tasks' recommendations."""
    pid = int(uuid.uuid4().int % 10**8) + 10**8
    redis_client.set(keys.labels(pid), json.dumps(["A", "B", "C"]))
    redis_client.hset(
        keys.recommendations(pid),
        mapping={
            "1": json.dumps(
                {"labels": ["A", "B", "C"], "probabilities": [0.6, 0.3, 0.1]}
            ),
            "2": json.dumps(
                {"labels": ["A", "B", "C"], "probabilities": [0.5, 0.4, 0.1]}
            ),
            "3": json.dumps(
                {"labels": ["B", "A", "C"], "probabilities": [0.6, 0.3, 0.1]}
            ),
            "4": json.dumps(
                {"labels": ["A", "B", "C"], "probabilities": [0.7, 0.2, 0.1]}
            ),
        },
    )
    TaskStore(redis_client).set_many(
        pid, {task: TaskState(label="A", origin="cluster") for task in (1, 2, 3, 4)}
    )
    yield pid
    for key in redis_client.scan_iter(keys.project_key(pid, "*")):
        redis_client.delete(key)


def test_task_state_round_trips_and_confirmed_means_person(redis_client, project):
    store = TaskStore(redis_client)
    store.set(project, 9, TaskState("B", "person", annotation_id=5, shift_id=None))

    state = store.get(project, 9)

    assert (state.label, state.origin, state.annotation_id) == ("B", "person", 5)
    assert state.confirmed and not store.get(project, 1).confirmed
    assert store.get(project, 12345) is None


def test_index_follows_incremental_changes_like_a_full_reload(redis_client, project):
    index = ProjectIndex(redis_client, project)
    index.refresh()
    store = TaskStore(redis_client)
    store.set(project, 2, TaskState("C", "person"))
    store.set_many(project, {5: TaskState("B", "shift")}, removed=[4])

    index.refresh()
    fresh = ProjectIndex(redis_client, project)
    fresh.refresh()

    def by_task(ix):
        ids, labels, confirmed, _, _ = ix.arrays()
        return {int(t): (int(l), bool(c)) for t, l, c in zip(ids, labels, confirmed)}

    assert by_task(index) == by_task(fresh)
    assert by_task(index)[2] == (2, True)  # C, confirmed
    assert by_task(index)[4] == (-1, False)  # no label any more
    assert by_task(index)[5] == (1, False)


def test_index_reloads_recommendations_when_the_model_version_changes(
    redis_client, project
):
    index = ProjectIndex(redis_client, project)
    index.refresh()
    redis_client.hset(
        keys.recommendations(project),
        "1",
        json.dumps({"labels": ["C", "B", "A"], "probabilities": [0.8, 0.1, 0.1]}),
    )
    redis_client.set(keys.model_version(project), "v2")

    index.refresh()

    row = index.row_of[1]
    assert index.recommendations[row, :3].tolist() == [2, 1, 0]
    assert np.isclose(index.probabilities[row, 0], 0.8)


def test_person_move_stores_the_proposal_the_rule_gives(redis_client, project):
    service = BulkShiftService(redis_client, ChoicesOnlyGateway())

    proposal = service.person_labeled(project, 1, "B", annotation_id=11)

    # Task 1 moved A -> B, B its 2nd recommendation; 2 and 4 also have B 2nd, task 3
    # has it 1st. Most confident first: 2 (0.4) before 4 (0.2).
    assert proposal["members"] == [2, 4]
    assert proposal["rank"] == 1
    assert service.proposals(project) == [proposal]
    assert TaskStore(redis_client).get(project, 1).origin == "person"


def test_same_label_again_is_a_confirmation_without_proposal(redis_client, project):
    service = BulkShiftService(redis_client, ChoicesOnlyGateway())

    assert service.person_labeled(project, 1, "A", annotation_id=11) is None
    assert TaskStore(redis_client).get(project, 1).confirmed


def test_reject_removes_the_proposal(redis_client, project):
    service = BulkShiftService(redis_client, ChoicesOnlyGateway())
    proposal = service.person_labeled(project, 1, "B", annotation_id=11)

    service.reject(project, proposal["id"])

    assert service.proposals(project) == []


def test_auto_apply_threshold():
    setting = AutoApply(enabled=True, min_size=2, min_confidence=0.5)

    assert setting.accepts({"members": [1, 2], "confidence": [0.6, 0.5]})
    assert not setting.accepts({"members": [1], "confidence": [0.9]})
    assert not setting.accepts({"members": [1, 2], "confidence": [0.3, 0.5]})
    assert not AutoApply(enabled=False).accepts(
        {"members": [1] * 50, "confidence": [1.0] * 50}
    )


def test_shift_record_round_trip_and_purity(redis_client, project):
    log = ShiftLog(redis_client)
    record = log.create(
        ShiftRecord(
            id=uuid.uuid4().hex[:12],
            project=project,
            kind="shift",
            source="A",
            destination="B",
            moves=[
                Move(
                    task=t,
                    label="B",
                    origin="shift",
                    previous_label="A",
                    previous_origin="cluster",
                )
                for t in (1, 2, 3, 4)
            ],
        )
    )

    log.record_correction(record.id, 2)
    log.record_correction(record.id, 2)  # the same correction twice counts once
    stored = log.get(record.id)

    assert stored.moves == record.moves
    assert stored.purity == pytest.approx(0.75)  # 3 of 4 stayed
    assert [r.id for r in log.list(project)] == [record.id]


def test_with_choices_replaces_the_options():
    config = (
        '<View><Image name="image" value="$image"/><Choices name="label" '
        'toName="image"><Choice value="A"/></Choices></View>'
    )

    updated = with_choices(config, ["A", "Chair", "Sock"])

    assert updated.count("<Choice ") == 3 and 'value="Chair"' in updated


@pytest.fixture
def client(redis_client):
    service = BulkShiftService(redis_client, ChoicesOnlyGateway())
    return create_app(service, "s3cret").test_client()


def update_event(project, task, label, stamp="2026-01-01T00:00:00Z"):
    return {
        "action": "ANNOTATION_UPDATED",
        "project": {"id": project},
        "annotation": {
            "id": 70,
            "task": task,
            "updated_at": stamp,
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [label]},
                }
            ],
        },
    }


def test_webhook_without_or_with_wrong_secret_is_401_and_changes_nothing(
    client, redis_client, project
):
    before = redis_client.hgetall(keys.tasks(project))

    missing = client.post("/webhook", json=update_event(project, 1, "B"))
    wrong = client.post(
        "/webhook", json=update_event(project, 1, "B"), headers={SECRET_HEADER: "guess"}
    )

    assert missing.status_code == 401 and wrong.status_code == 401
    assert redis_client.hgetall(keys.tasks(project)) == before
    assert not redis_client.exists(keys.proposals(project))


def test_replayed_webhook_is_applied_once(client, redis_client, project):
    headers = {SECRET_HEADER: "s3cret"}
    event = update_event(project, 1, "B", stamp=uuid.uuid4().hex)

    first = client.post("/webhook", json=event, headers=headers)
    second = client.post("/webhook", json=event, headers=headers)

    assert first.get_json()["result"] == "recorded"
    assert second.get_json()["result"] == "duplicate"
    assert redis_client.hlen(keys.proposals(project)) == 1


def test_webhook_for_a_task_in_flight_is_our_own_write(client, redis_client, project):
    redis_client.sadd(keys.in_flight(project), 1)

    answer = client.post(
        "/webhook",
        json=update_event(project, 1, "C", uuid.uuid4().hex),
        headers={SECRET_HEADER: "s3cret"},
    )

    assert answer.get_json()["result"] == "own write"
    assert TaskStore(redis_client).get(project, 1).label == "A"


# -- one source for key names and for finding Redis --------------------------------


def test_the_service_key_names_are_the_store_s():
    assert keys.labels is store.labels_key
    assert keys.clusters is store.clusters_key
    assert keys.recommendations is store.recommendations_key
    assert keys.model_version is store.model_version_key
    assert keys.tasks is store.tasks_key
    assert keys.project_key is store.project_key
    assert (keys.PREFIX, keys.EVENTS_SEEN) == ("bulkshift", "bulkshift:events:seen")
    # Spelled out once, from docs/ARCHITECTURE.md, so a rename shows up here.
    assert keys.labels(7) == "bulkshift:project:7:labels"
    assert keys.proposals(7) == "bulkshift:project:7:proposals"
    assert keys.shifts(7) == "bulkshift:project:7:shifts"
    assert keys.shift("ab12") == "bulkshift:shift:ab12"


def test_service_and_backend_resolve_the_data_dir_alike(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BULKSHIFT_DATA_DIR", "")  # set but empty, as compose does
    settings = Settings.from_environment(
        label_studio_api_key="token", webhook_secret="secret"
    )
    assert settings.data_dir == store.data_dir() == tmp_path / "var"


def test_without_redis_url_the_service_uses_the_stack_s_embedded_redis(
    monkeypatch, tmp_path
):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("BULKSHIFT_DATA_DIR", str(tmp_path))
    service_client = connect_redis(None)
    try:
        backend_client = store.connect()
        service_client.set("bulkshift:test:who", "service")
        assert backend_client.get("bulkshift:test:who") == b"service"
        port = int((tmp_path / "redis" / "redis.port").read_text())
        assert service_client.connection_pool.connection_kwargs["port"] == port
        # Recorded so that down.sh (or a person) can stop it by PID.
        pid = int((tmp_path / "redis" / "redis.pid").read_text())
        assert process_start_time(pid) is not None
    finally:
        try:  # the server this test made start
            service_client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
