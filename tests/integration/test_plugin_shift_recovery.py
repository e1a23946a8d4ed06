"""Killing Label Studio in the middle of a shift, then retrying, loses and duplicates
nothing.

This test starts its own Label Studio (the session one is shared with other tests, and
this one is killed with SIGKILL), so it takes about a minute.
"""

from __future__ import annotations

import os
import signal

import pytest
import redis

from bulk_shift_plugin.errors import LabelStudioUnavailableError
from bulk_shift_plugin.labelstudio import (
    HELPER_MODEL_VERSION_PREFIX,
    LabelStudioGateway,
)
from bulk_shift_plugin.shifts import ShiftApplier
from bulk_shift_plugin.state import TaskStore
from bulkshift.stack.labelstudio import LabelStudioServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="A"/><Choice value="B"/><Choice value="C"/></Choices></View>'
)
N_TASKS = 30
CHUNK = 10


@pytest.fixture
def own_label_studio(tmp_path):
    server = LabelStudioServer(tmp_path / "ls").start()
    yield server
    server.stop()


def annotations_by_task(gateway, project):
    return {
        task: [label for _, label in entry.annotations]
        for task, entry in gateway.task_annotations(project).items()
    }


def test_kill_label_studio_mid_shift_then_retry_completes_it(
    own_label_studio, redis_server
):
    server = own_label_studio
    redis_client = redis.Redis.from_url(redis_server)
    gateway = LabelStudioGateway(server.url, server.token, timeout=20)
    client = gateway.client
    project = client.projects.create(
        title="shift recovery", label_config=LABEL_CONFIG
    ).id
    tasks = list(
        client.projects.import_tasks(
            project,
            request=[{"image": f"/data/none-{i}.png"} for i in range(N_TASKS + 5)],
            return_task_ids=True,
        ).task_ids
    )
    members, bystanders = tasks[:N_TASKS], tasks[N_TASKS:]

    # Everything starts in A (a machine label), the way folder naming leaves it.
    setup = ShiftApplier(redis_client, gateway, chunk_size=CHUNK)
    setup.apply(
        setup.record(project, "naming", {t: "A" for t in tasks}, origin="cluster")
    )

    # Kill Label Studio after the second chunk's helper predictions were imported:
    # chunk 1 is moved, chunk 2 has lost its annotations, chunk 3 is untouched.
    steps = []

    def kill_after_second_import(record, step):
        steps.append(step)
        if steps.count("import") == 2 and server.pid is not None:
            os.killpg(server.pid, signal.SIGKILL)

    applier = ShiftApplier(
        redis_client, gateway, chunk_size=CHUNK, after_step=kill_after_second_import
    )
    record = applier.record(
        project,
        "shift",
        {t: "B" for t in members},
        origin="shift",
        source="A",
        destination="B",
    )
    with pytest.raises(LabelStudioUnavailableError):
        applier.apply(record)

    failed = applier.log.get(record.id)
    assert failed.status == "failed"
    assert set(failed.moved) == set(members[:CHUNK])  # the record says what moved
    assert [m.previous_label for m in failed.moves] == ["A"] * N_TASKS

    server.stop()
    server.start()
    applier.after_step = None
    done = applier.retry(record.id)

    assert done.status == "applied" and done.attempts == 2
    labels = annotations_by_task(gateway, project)
    assert all(labels[t] == ["B"] for t in members)  # exactly one annotation each
    assert all(labels[t] == ["A"] for t in bystanders)
    states = TaskStore(redis_client).get_many(project, tasks)
    assert all(
        states[t].label == "B" and states[t].shift_id == record.id for t in members
    )
    # No helper predictions remain from either attempt.
    remaining = [
        p
        for t in client.tasks.list(project=project, fields="all")
        for p in (t.predictions or [])
        if str(p.get("model_version", "")).startswith(HELPER_MODEL_VERSION_PREFIX)
    ]
    assert remaining == []

    # Retrying an applied shift changes nothing.
    assert applier.retry(record.id).attempts == 2
    assert annotations_by_task(gateway, project) == labels
