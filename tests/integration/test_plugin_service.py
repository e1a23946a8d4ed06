"""The bulk-shift service against a real Label Studio 1.23 and a real Redis.

One hand-worked project of eight tasks (labels A, B, C; three recommendations each):

====  =======  ===============  ======================  ==========================
task  label    recommendations  p(recommendation 2)     proposed after t0: A -> B?
====  =======  ===============  ======================  ==========================
t0    A        A, B, C          0.30                    the seed (B is its 2nd)
t1    A        A, B, C          0.30                    yes
t2    A        A, B, C          0.40                    yes, first (more confident)
t3    A        B, A, C          (B is 1st, not 2nd)     no: rank differs
t4    C        A, B, C          0.30                    no: source is C
t5    A        A, B, C          0.35                    no: a person confirmed A
t6    A        A, C, B          (B is 3rd)              no: rank differs
t7    B        A, B, C          0.30                    no: already B
====  =======  ===============  ======================  ==========================

So the proposal is exactly [t2, t1].
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis
import requests
from werkzeug.serving import make_server

from bulk_shift_plugin import keys
from bulk_shift_plugin.app import create_app
from bulk_shift_plugin.labelstudio import SECRET_HEADER, LabelStudioGateway
from bulk_shift_plugin.service import BulkShiftService
from bulk_shift_plugin.state import TaskStore

pytestmark = pytest.mark.integration

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image"><Choice value="A"/></Choices></View>'
)
FOLDERS = {0: [0, 1, 2, 3, 5, 6], 1: [4], 2: [7]}
FOLDER_NAMES = {0: "A", 1: "C", 2: "B"}
RECOMMENDATIONS = {
    0: (["A", "B", "C"], [0.6, 0.3, 0.1]),
    1: (["A", "B", "C"], [0.6, 0.3, 0.1]),
    2: (["A", "B", "C"], [0.5, 0.4, 0.1]),
    3: (["B", "A", "C"], [0.6, 0.3, 0.1]),
    4: (["A", "B", "C"], [0.6, 0.3, 0.1]),
    5: (["A", "B", "C"], [0.55, 0.35, 0.1]),
    6: (["A", "C", "B"], [0.6, 0.3, 0.1]),
    7: (["A", "B", "C"], [0.6, 0.3, 0.1]),
}
EXPECTED_PROPOSAL = [2, 1]


class RunningService:
    """The service's Flask app on a free port in a thread, as Label Studio sees it."""

    def __init__(self, service: BulkShiftService, secret: str):
        self.service = service
        self.secret = secret
        self.server = make_server(
            "127.0.0.1", 0, create_app(service, secret), threaded=True
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@pytest.fixture
def project(ls_client, redis_client, label_studio):
    """A fresh project of eight tasks with folders and recommendations in Redis.

    Yields ``(project id, task ids in table order)``.
    """
    created = ls_client.projects.create(
        title=f"bulk shift {uuid.uuid4().hex[:6]}", label_config=LABEL_CONFIG
    )
    imported = ls_client.projects.import_tasks(
        created.id,
        request=[{"image": f"/data/none-{i}.png"} for i in range(8)],
        return_task_ids=True,
    )
    tasks = list(imported.task_ids)
    pid = created.id
    redis_client.set(keys.labels(pid), json.dumps(["A"]))
    redis_client.set(
        keys.clusters(pid),
        json.dumps(
            {
                "model_version": "test",
                "clusters": [
                    {
                        "cluster": c,
                        "name": f"Cluster {c + 1:02d}",
                        "tasks": [tasks[i] for i in members],
                    }
                    for c, members in FOLDERS.items()
                ],
            }
        ),
    )
    redis_client.hset(
        keys.recommendations(pid),
        mapping={
            str(tasks[i]): json.dumps(
                {
                    "labels": labels,
                    "probabilities": probabilities,
                    "model_version": "test",
                }
            )
            for i, (labels, probabilities) in RECOMMENDATIONS.items()
        },
    )
    redis_client.set(keys.model_version(pid), "test")
    yield pid, tasks
    ls_client.projects.delete(pid)


@pytest.fixture
def running(redis_client, label_studio, project):
    secret = uuid.uuid4().hex
    gateway = LabelStudioGateway(label_studio.url, label_studio.token)
    service = BulkShiftService(redis_client, gateway)
    running = RunningService(service, secret)
    service.register(project[0], running.url, secret)
    yield running
    running.stop()


def ls_labels(ls_client, pid) -> dict[int, list[str]]:
    """Every task's annotation labels, read from Label Studio."""
    found = {}
    for task in ls_client.tasks.list(project=pid, fields="all"):
        found[task.id] = [
            a["result"][0]["value"]["choices"][0] for a in task.annotations or []
        ]
    return found


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def name_folders_and_confirm_t5(running, ls_client, project):
    pid, tasks = project
    running.service.name_clusters(pid, FOLDER_NAMES)
    labels = ls_labels(ls_client, pid)
    assert [labels[t] for t in tasks] == [
        ["A"],
        ["A"],
        ["A"],
        ["A"],
        ["C"],
        ["A"],
        ["A"],
        ["B"],
    ]
    # A person opens t5 and submits it unchanged: a confirmation.
    state = TaskStore(running.service.redis).get(pid, tasks[5])
    ls_client.annotations.update(
        state.annotation_id,
        result=[
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": ["A"]},
            }
        ],
    )
    assert wait_for(
        lambda: TaskStore(running.service.redis).get(pid, tasks[5]).confirmed
    )


def person_moves(ls_client, redis_client, pid, task, label):
    state = TaskStore(redis_client).get(pid, task)
    ls_client.annotations.update(
        state.annotation_id,
        result=[
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
    )


def test_naming_gives_every_task_its_folder_label_with_cluster_origin(
    running, ls_client, project
):
    pid, tasks = project
    record = running.service.name_clusters(pid, FOLDER_NAMES)

    assert record.status == "applied" and len(record.moves) == 8
    states = TaskStore(running.service.redis).get_many(pid, tasks)
    assert {states[t].origin for t in tasks} == {"cluster"}
    config = ls_client.projects.get(pid).label_config
    assert all(f'value="{name}"' in config for name in "ABC")
    # The helper predictions are gone again (deleted in the background).
    running.service.applier.wait_for_cleanups(timeout=60)
    assert all(
        not t.predictions for t in ls_client.tasks.list(project=pid, fields="all")
    )


def test_move_proposes_accept_updates_exactly_those_and_undo_restores(
    running, ls_client, redis_client, project
):
    pid, tasks = project
    name_folders_and_confirm_t5(running, ls_client, project)
    before = ls_labels(ls_client, pid)

    person_moves(ls_client, redis_client, pid, tasks[0], "B")
    proposals = wait_for(lambda: running.service.proposals(pid))

    assert len(proposals) == 1
    proposal = proposals[0]
    assert (proposal["source"], proposal["destination"], proposal["rank"]) == (
        "A",
        "B",
        1,
    )
    assert proposal["members"] == [tasks[i] for i in EXPECTED_PROPOSAL]

    answer = requests.post(
        f"{running.url}/projects/{pid}/proposals/{proposal['id']}/accept",
        data={"all": "1"},
        headers={"Accept": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    shift_id = answer.json()["shift"]
    after = ls_labels(ls_client, pid)
    changed = {t for t in tasks if after[t] != before[t]}
    assert changed == {tasks[0], tasks[1], tasks[2]}  # the person's move and the shift
    assert after[tasks[1]] == ["B"] and after[tasks[2]] == ["B"]
    assert TaskStore(redis_client).get(pid, tasks[1]).origin == "shift"
    # Our own writes came back as webhooks: they must not look like a person's moves.
    assert running.service.proposals(pid) == []
    assert TaskStore(redis_client).get(pid, tasks[0]).origin == "person"

    answer = requests.post(
        f"{running.url}/projects/{pid}/shifts/{shift_id}/undo",
        headers={"Accept": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    restored = ls_labels(ls_client, pid)
    assert restored[tasks[1]] == ["A"] and restored[tasks[2]] == ["A"]
    assert restored[tasks[0]] == ["B"]  # the person's own move stays
    states = TaskStore(redis_client).get_many(pid, tasks)
    assert states[tasks[1]].origin == "cluster" and states[tasks[2]].origin == "cluster"
    assert running.service.log.get(shift_id).status == "undone"


def test_partial_accept_moves_only_ticked_images(
    running, ls_client, redis_client, project
):
    pid, tasks = project
    name_folders_and_confirm_t5(running, ls_client, project)
    person_moves(ls_client, redis_client, pid, tasks[0], "B")
    proposal = wait_for(lambda: running.service.proposals(pid))[0]

    answer = requests.post(
        f"{running.url}/projects/{pid}/proposals/{proposal['id']}/accept",
        data={"keep": [str(tasks[1])]},
        timeout=60,
        allow_redirects=False,
    )

    assert answer.status_code == 302
    labels = ls_labels(ls_client, pid)
    assert labels[tasks[1]] == ["B"] and labels[tasks[2]] == ["A"]


def test_accept_up_to_here_moves_the_ticked_images_before_the_cut(
    running, ls_client, redis_client, project
):
    pid, tasks = project
    name_folders_and_confirm_t5(running, ls_client, project)
    person_moves(ls_client, redis_client, pid, tasks[0], "B")
    proposal = wait_for(lambda: running.service.proposals(pid))[0]
    first, second = proposal["members"]

    answer = requests.post(
        f"{running.url}/projects/{pid}/proposals/{proposal['id']}/accept",
        data={"keep": [str(first), str(second)], "up_to": str(first)},
        timeout=60,
        allow_redirects=False,
    )

    assert answer.status_code == 302
    labels = ls_labels(ls_client, pid)
    assert labels[first] == ["B"] and labels[second] == ["A"]


def test_confirmed_task_is_never_proposed(running, ls_client, redis_client, project):
    pid, tasks = project
    name_folders_and_confirm_t5(running, ls_client, project)

    person_moves(ls_client, redis_client, pid, tasks[0], "B")
    proposal = wait_for(lambda: running.service.proposals(pid))[0]

    # t5 matches the rank and the source; only the person's confirmation keeps it out.
    assert tasks[5] not in proposal["members"]


def test_webhook_without_secret_is_refused_and_changes_nothing(
    running, redis_client, project
):
    pid, tasks = project
    before = redis_client.hgetall(keys.tasks(pid))
    payload = {
        "action": "ANNOTATION_UPDATED",
        "project": {"id": pid},
        "annotation": {
            "id": 1,
            "task": tasks[0],
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["B"]},
                }
            ],
        },
    }

    missing = requests.post(f"{running.url}/webhook", json=payload, timeout=10)
    wrong = requests.post(
        f"{running.url}/webhook",
        json=payload,
        timeout=10,
        headers={SECRET_HEADER: "not-the-secret"},
    )

    assert missing.status_code == 401 and wrong.status_code == 401
    assert redis_client.hgetall(keys.tasks(pid)) == before
    assert running.service.proposals(pid) == []


def test_replayed_event_is_applied_once(running, ls_client, redis_client, project):
    pid, tasks = project
    running.service.name_clusters(pid, FOLDER_NAMES)
    state = TaskStore(redis_client).get(pid, tasks[0])
    payload = {
        "action": "ANNOTATION_UPDATED",
        "project": {"id": pid},
        "annotation": {
            "id": state.annotation_id,
            "task": tasks[0],
            "updated_at": "2026-01-01T00:00:00Z",
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["B"]},
                }
            ],
        },
    }
    headers = {SECRET_HEADER: running.secret}

    first = requests.post(
        f"{running.url}/webhook", json=payload, headers=headers, timeout=10
    )
    second = requests.post(
        f"{running.url}/webhook", json=payload, headers=headers, timeout=10
    )

    assert first.json()["result"] == "recorded"
    assert second.json()["result"] == "duplicate"
    assert len(running.service.proposals(pid)) == 1


def test_naming_page_merges_in_the_background_and_leaves_only_the_names(
    running, ls_client, redis_client, project
):
    pid, tasks = project
    # As after the backend's first refresh: one choice per folder, plus one a
    # person added by hand.
    choices = ["Cluster 01", "Cluster 02", "Cluster 03", "Extra"]
    ls_client.projects.update(
        pid,
        label_config=LABEL_CONFIG.replace(
            '<Choice value="A"/>', "".join(f'<Choice value="{c}"/>' for c in choices)
        ),
    )
    redis_client.set(keys.labels(pid), json.dumps(choices[:3]))

    answer = requests.post(
        f"{running.url}/projects/{pid}/naming",
        data={"name_0": "A", "name_1": "C", "merge_2": "cluster:0"},
        timeout=10,
        allow_redirects=False,
    )

    assert answer.status_code == 303, answer.text
    status = wait_for(
        lambda: (
            (
                s := requests.get(
                    f"{running.url}/projects/{pid}/naming/status", timeout=10
                ).json()
            )["status"]
            != "running"
            and s
        ),
        timeout=60,
    )
    assert status["status"] == "done", status
    labels = ls_labels(ls_client, pid)
    assert labels[tasks[7]] == ["A"] and labels[tasks[4]] == ["C"]
    config = running.service.gateway.choices_control(pid, refresh=True).labels
    assert config == ["A", "C", "Extra"]
    assert json.loads(redis_client.get(keys.labels(pid))) == config
    page = requests.get(f"{running.url}/projects/{pid}/naming", timeout=10).text
    assert "were named on" in page and 'value="A"' in page
