"""Benchmark: how long after a person's move is the bulk-shift proposal ready?

Fills a synthetic project (default 10,000 tasks, 30 labels, 10 recommendations each)
into a real Redis, then times the service's whole path for a person's move: record the
task's new label, bring the cached arrays up to date, run the "guarded-pool" rule,
store the proposal. Prints p50 / p95 / max over many moves and the one-off cold load.

    python scripts/bench_proposals.py                      # starts its own redis-server
    python scripts/bench_proposals.py --redis-url redis://127.0.0.1:6379/15

The target (issue 4) is p95 <= 200 ms at 10,000 tasks; this script prints the figure
and never asserts it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import numpy as np
import redis

from bulk_shift_plugin import keys
from bulk_shift_plugin.service import BulkShiftService
from bulk_shift_plugin.state import TaskState, TaskStore, now_iso


def fill_project(client, project, n_tasks, n_labels, rng):
    names = [f"label-{i:02d}" for i in range(n_labels)]
    client.set(keys.labels(project), json.dumps(names))
    client.set(keys.model_version(project), "bench")
    labels = rng.integers(0, n_labels, n_tasks)
    task_ids = np.arange(1, n_tasks + 1)
    pipe = client.pipeline(transaction=False)
    for task, label in zip(task_ids, labels):
        # The current label is usually the best recommendation.
        probabilities = rng.dirichlet(np.ones(n_labels) * 0.3)
        probabilities[label] += 1.0
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities, kind="stable")[:10]
        pipe.hset(
            keys.recommendations(project),
            str(task),
            json.dumps(
                {
                    "labels": [names[i] for i in order],
                    "probabilities": [round(float(probabilities[i]), 6) for i in order],
                    "model_version": "bench",
                }
            ),
        )
    pipe.execute()
    TaskStore(client).set_many(
        project,
        {
            int(task): TaskState(label=names[label], origin="cluster", at=now_iso())
            for task, label in zip(task_ids, labels)
        },
    )
    return names, task_ids, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--redis-url",
        help="use this Redis (its keys for the project "
        "are overwritten); default: start a redis-server in a tmp dir",
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--moves", type=int, default=300)
    parser.add_argument("--project", type=int, default=990_001)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    server = None
    if arguments.redis_url:
        url = arguments.redis_url
    else:
        from bulkshift.stack.redis_server import RedisServer

        server = RedisServer(
            tempfile.mkdtemp(prefix="bench-redis-"), persist=False
        ).start()
        url = server.url
    try:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(keys.project_key(arguments.project, "*")):
            client.delete(key)
        rng = np.random.default_rng(arguments.seed)
        _names, task_ids, _labels = fill_project(
            client, arguments.project, arguments.tasks, arguments.labels, rng
        )
        service = BulkShiftService(client, gateway=None)

        started = time.perf_counter()
        service.index(arguments.project)
        cold = time.perf_counter() - started

        timings, sizes = [], []
        for _ in range(arguments.moves):
            row = int(rng.integers(0, arguments.tasks))
            task = int(task_ids[row])
            record = json.loads(
                client.hget(keys.recommendations(arguments.project), str(task))
            )
            destination = record["labels"][int(rng.integers(1, 4))]
            started = time.perf_counter()
            proposal = service.person_labeled(
                arguments.project, task, destination, None
            )
            timings.append(time.perf_counter() - started)
            sizes.append(len(proposal["members"]) if proposal else 0)
            client.delete(keys.proposals(arguments.project))

        timings_ms = np.array(timings) * 1000
        print(
            f"seed {arguments.seed}, {arguments.tasks} tasks, {arguments.labels} "
            "labels, "
            f"{arguments.moves} moves"
        )
        print(f"cold load of the cached arrays: {cold * 1000:.0f} ms")
        print(
            f"move -> proposal stored: p50 {np.percentile(timings_ms, 50):.1f} ms, "
            f"p95 {np.percentile(timings_ms, 95):.1f} ms, max {timings_ms.max():.1f} ms"
        )
        print(
            f"proposal size: mean {np.mean(sizes):.1f}, max {max(sizes)}, "
            f"{sum(s > 0 for s in sizes)} of {len(sizes)} moves proposed something"
        )
        for key in client.scan_iter(keys.project_key(arguments.project, "*")):
            client.delete(key)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
