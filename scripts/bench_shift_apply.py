"""Benchmark: seconds to apply (and undo) a shift of N tasks in a real Label Studio.

Creates a project of ``--tasks`` tasks, labels them all A through the service's own
machinery, then shifts ``--shift`` of them to B and undoes that, printing the seconds
of each (the whole recorded transaction: reading the members, the three Data Manager
calls per chunk, verifying and writing Redis), and separately the background deletion
of the helper predictions.

    python scripts/bench_shift_apply.py                       # starts LS + Redis itself
    python scripts/bench_shift_apply.py --label-studio-url http://127.0.0.1:8080 \\
        --api-key-file token.txt --redis-url redis://127.0.0.1:6379/15

The target (issue 4) is <= 10 s for a 500-task shift; the script prints, never asserts.
The project it creates is deleted at the end.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import redis

from bulk_shift_plugin.labelstudio import LabelStudioGateway
from bulk_shift_plugin.shifts import ShiftApplier

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="A"/><Choice value="B"/></Choices></View>'
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label-studio-url")
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="Label Studio data dir to start "
        "(reused between runs: ~5 s instead of ~55 s)",
    )
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--shift", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=500)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    started_servers = []
    try:
        if arguments.redis_url:
            redis_url = arguments.redis_url
        else:
            from bulkshift.stack.redis_server import RedisServer

            server = RedisServer(tempfile.mkdtemp(prefix="bench-redis-"), persist=False)
            started_servers.append(server.start())
            redis_url = server.url
        if arguments.label_studio_url:
            url = arguments.label_studio_url
            token = arguments.api_key_file.read_text().strip()
        else:
            from bulkshift.stack.labelstudio import LabelStudioServer

            data_dir = arguments.data_dir or Path(tempfile.mkdtemp(prefix="bench-ls-"))
            server = LabelStudioServer(data_dir)
            started_servers.append(server.start())
            url, token = server.url, server.token

        gateway = LabelStudioGateway(url, token)
        client = redis.Redis.from_url(redis_url)
        # As in the service: the helper predictions are deleted in the background
        # once the shift is applied; their deletion is timed separately.
        applier = ShiftApplier(
            client, gateway, chunk_size=arguments.chunk_size, background_cleanup=True
        )
        project = gateway.client.projects.create(
            title="bench shift apply", label_config=LABEL_CONFIG
        ).id
        try:
            tasks = list(
                gateway.client.projects.import_tasks(
                    project,
                    request=[
                        {"image": f"/data/none-{i}.png"} for i in range(arguments.tasks)
                    ],
                    return_task_ids=True,
                ).task_ids
            )

            started = time.perf_counter()
            applier.apply(
                applier.record(
                    project, "naming", {t: "A" for t in tasks}, origin="cluster"
                )
            )
            naming = time.perf_counter() - started
            applier.wait_for_cleanups()

            members = tasks[: arguments.shift]
            started = time.perf_counter()
            record = applier.record(
                project,
                "shift",
                {t: "B" for t in members},
                origin="shift",
                source="A",
                destination="B",
            )
            applier.apply(record)
            shift = time.perf_counter() - started
            started = time.perf_counter()
            applier.wait_for_cleanups()
            cleanup = time.perf_counter() - started

            started = time.perf_counter()
            applier.undo(record.id)
            undo = time.perf_counter() - started
            applier.wait_for_cleanups()

            print(
                f"Label Studio {url}, {arguments.tasks} tasks, chunk size "
                f"{arguments.chunk_size}"
            )
            print(f"label all {arguments.tasks} tasks A (naming): {naming:.2f} s")
            print(
                f"shift {arguments.shift} tasks A -> B (record, 3 Data Manager calls, "
                f"verify, Redis): {shift:.2f} s"
            )
            print(
                f"then deleting its helper predictions in the background: "
                f"{cleanup:.2f} s more"
            )
            print(f"undo that shift: {undo:.2f} s")
        finally:
            gateway.client.projects.delete(project)
    finally:
        for server in reversed(started_servers):
            server.stop()


if __name__ == "__main__":
    main()
