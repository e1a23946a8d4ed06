"""``python -m ml_backend.worker [--burst]``: run the backend's RQ worker.

It computes features, folders and models for the jobs the HTTP server queues. Run one
per machine: the refresh of a project holds a Redis lock, so a second worker would
only wait.
"""

from __future__ import annotations

import argparse
import sys

from rq import Queue, SimpleWorker, Worker

from bulkshift import store
from ml_backend.config import configure_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_backend.worker", description="Bulk Shift backend worker"
    )
    parser.add_argument(
        "--burst", action="store_true", help="exit when the queue is empty"
    )
    parser.add_argument(
        "--no-fork",
        action="store_true",
        help="run jobs in this process (keeps models and the feature extractor "
        "loaded between jobs; the default)",
        default=True,
    )
    parser.add_argument(
        "--fork",
        dest="no_fork",
        action="store_false",
        help="run each job in a forked child (RQ's default)",
    )
    parser.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)

    settings = configure_process("ml_backend.worker", arguments.log_level)

    connection = store.connect()
    queue = Queue(settings.queue_name, connection=connection)
    # In-process jobs: a fork per job would load TensorFlow and VGG16 again each time.
    worker_class = SimpleWorker if arguments.no_fork else Worker
    worker = worker_class([queue], connection=connection)
    worker.work(burst=arguments.burst, with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
