"""scripts/relabel.py against a real Label Studio and Redis."""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

import pytest
import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.labelstudio import LabelStudioGateway
from bulk_shift_plugin.shifts import ShiftApplier
from bulk_shift_plugin.state import TaskState, TaskStore
from bulk_shift_plugin.transactions import ShiftLog

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "relabel.py"
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="A"/><Choice value="B"/></Choices></View>'
)


def load_cli():
    spec = importlib.util.spec_from_file_location("relabel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(label_studio, redis_server, ls_client, tmp_path):
    """Six tasks in A; t0..t2 have B as their 2nd recommendation; t1 is confirmed."""
    redis_client = redis.Redis.from_url(redis_server)
    gateway = LabelStudioGateway(label_studio.url, label_studio.token)
    pid = ls_client.projects.create(
        title=f"relabel {uuid.uuid4().hex[:6]}", label_config=LABEL_CONFIG
    ).id
    tasks = list(
        ls_client.projects.import_tasks(
            pid,
            request=[{"image": f"/data/none-{i}.png"} for i in range(6)],
            return_task_ids=True,
        ).task_ids
    )
    applier = ShiftApplier(redis_client, gateway)
    applier.apply(
        applier.record(pid, "naming", {t: "A" for t in tasks}, origin="cluster")
    )
    state = TaskStore(redis_client).get(pid, tasks[1])
    TaskStore(redis_client).set(
        pid, tasks[1], TaskState("A", "person", state.annotation_id)
    )
    redis_client.set(keys.labels(pid), json.dumps(["A", "B"]))
    for i, task in enumerate(tasks):
        second = "B" if i < 3 else "C"
        redis_client.hset(
            keys.recommendations(pid),
            str(task),
            json.dumps(
                {
                    "labels": ["A", second],
                    "probabilities": [0.7, 0.3],
                    "model_version": "t",
                }
            ),
        )
    token_file = tmp_path / "token"
    token_file.write_text(label_studio.token)
    common = [
        "--label-studio-url",
        label_studio.url,
        "--api-key-file",
        str(token_file),
        "--redis-url",
        redis_server,
    ]
    yield pid, tasks, common, gateway, redis_client
    ls_client.projects.delete(pid)


def labels_in_ls(gateway, pid):
    return {
        t: [label for _, label in e.annotations]
        for t, e in gateway.task_annotations(pid).items()
    }


def test_help_describes_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_cli().main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("move", "rename", "merge", "undo", "shifts"))


def test_dry_run_changes_nothing(setup, capsys):
    pid, _tasks, common, gateway, redis_client = setup
    before = labels_in_ls(gateway, pid)

    code = load_cli().main(
        [
            *common,
            "move",
            "--project",
            str(pid),
            "--from",
            "A",
            "--to",
            "B",
            "--dry-run",
        ]
    )

    assert code == 0
    assert "5 tasks would move" in capsys.readouterr().out  # all but confirmed t1
    assert labels_in_ls(gateway, pid) == before
    assert ShiftLog(redis_client).list(pid)[-1].kind == "naming"


def test_move_by_rank_skips_confirmed_and_undo_restores(setup, capsys):
    pid, tasks, common, gateway, redis_client = setup
    cli = load_cli()

    code = cli.main(
        [
            *common,
            "move",
            "--project",
            str(pid),
            "--from",
            "A",
            "--to",
            "B",
            "--rank",
            "2",
        ]
    )

    assert code == 0
    labels = labels_in_ls(gateway, pid)
    # t0 and t2 have B second; t1 too, but a person confirmed it.
    assert [labels[t] for t in tasks] == [["B"], ["A"], ["B"], ["A"], ["A"], ["A"]]
    shift = ShiftLog(redis_client).list(pid)[-1]
    assert (shift.kind, shift.source, shift.destination) == ("relabel", "A", "B")

    assert cli.main([*common, "shifts", "--project", str(pid)]) == 0
    assert shift.id in capsys.readouterr().out

    assert cli.main([*common, "undo", shift.id]) == 0
    labels = labels_in_ls(gateway, pid)
    assert all(labels[t] == ["A"] for t in tasks)
    assert TaskStore(redis_client).get(pid, tasks[0]).origin == "cluster"


def test_rename_keeps_a_persons_confirmation(setup):
    pid, tasks, common, gateway, redis_client = setup

    code = load_cli().main(
        [*common, "rename", "--project", str(pid), "--from", "A", "--to", "Alpha"]
    )

    assert code == 0
    labels = labels_in_ls(gateway, pid)
    assert all(labels[t] == ["Alpha"] for t in tasks)
    assert TaskStore(redis_client).get(pid, tasks[1]).origin == "person"
    choices = gateway.choices_control(pid, refresh=True).labels
    assert "A" not in choices and "Alpha" in choices


def test_api_key_file_may_be_the_credentials_json_up_sh_writes(
    setup, label_studio, tmp_path, capsys
):
    pid, _tasks, common, _gateway, _redis = setup
    credentials = tmp_path / "credentials.json"
    credentials.write_text(
        json.dumps({"username": "u", "password": "p", "token": label_studio.token})
    )
    common = [*common]
    common[common.index("--api-key-file") + 1] = str(credentials)

    code = load_cli().main([*common, "shifts", "--project", str(pid)])

    assert code == 0, capsys.readouterr().err
    assert "naming" in capsys.readouterr().out


def test_move_to_a_misspelled_label_lists_the_labels_unless_create_label(setup, capsys):
    pid, tasks, common, gateway, _redis = setup
    move = [*common, "move", "--project", str(pid), "--from", "A", "--to", "Bee"]
    before = labels_in_ls(gateway, pid)

    assert load_cli().main(move) == 1
    error = capsys.readouterr().err
    assert "'Bee' is not in project" in error and "labels are: A, B" in error
    assert "--create-label" in error
    assert labels_in_ls(gateway, pid) == before

    assert load_cli().main([*move, "--create-label"]) == 0
    assert labels_in_ls(gateway, pid)[tasks[0]] == ["Bee"]
    assert "Bee" in gateway.choices_control(pid, refresh=True).labels
