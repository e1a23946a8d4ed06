"""Seconds for one retrain of the ML backend on a project of 3,000 tasks.

The features are already cached in Redis (as after the first refresh), 30 labels are
in use and 300 tasks carry a person's label. Label Studio is replaced by an in-memory
stand-in, so the figure is the backend's own work: reading the cached features,
training, ranking, building 3,000 predictions and writing Redis. The other tasks carry
their (named) folder as label, 20 % of them wrong. A real Redis server is
started for the run (or REDIS_URL is used).

    python scripts/bench_retrain.py [--tasks 3000] [--labels 30] [--dim 512] [--seed 0]

Target: <= 3 s (issue 3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time

import numpy as np
import redis

from bulkshift.stack.redis_server import RedisServer
from bulkshift.store import BackendStore
from ml_backend import protocol
from ml_backend.config import Settings
from ml_backend.features import images_key
from ml_backend.jobs import Refresher

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image">{choices}</Choices>'
    '<TextArea name="bulkshift_recommended" toName="image" readonly="true"/></View>'
)


class InMemoryLabelStudio:
    """The few Label Studio calls a refresh makes, answered from memory."""

    def __init__(self, tasks: list[dict], label_config: str):
        self._tasks = tasks
        self._project = {"label_config": label_config, "model_version": ""}
        self.pushed = 0

    def project(self, project):
        return self._project

    def update_project(self, project, **fields):
        self._project.update(fields)

    def tasks(self, project):
        return self._tasks

    def fetch_image(self, url):
        raise AssertionError("features are cached; no image should be fetched")

    def import_predictions(self, project, predictions):
        self.pushed += len(predictions)

    def delete_model_version(self, project, model_version):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--labels", type=int, default=30)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--labeled", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    rng = np.random.default_rng(arguments.seed)
    project = 1

    # Features: one Gaussian blob per label, like VGG16 vectors of distinct categories.
    true_labels = rng.integers(0, arguments.labels, arguments.tasks)
    centres = rng.normal(0, 1, (arguments.labels, arguments.dim))
    features = centres[true_labels] + rng.normal(
        0, 1.5, (arguments.tasks, arguments.dim)
    )
    features = np.abs(features).astype(np.float32)
    names = [f"category {i:02d}" for i in range(arguments.labels)]
    labeled = set(
        rng.choice(arguments.tasks, arguments.labeled, replace=False).tolist()
    )

    tasks = []
    for index in range(arguments.tasks):
        annotations = []
        if index in labeled:
            annotations.append(
                {
                    "id": index,
                    "result": [
                        protocol.choice_region(
                            protocol.parse_labeling_config(
                                LABEL_CONFIG.format(choices="<Choice value='x'/>")
                            ),
                            names[true_labels[index]],
                        )
                    ],
                }
            )
        tasks.append(
            {
                "id": index + 1,
                "data": {"image": f"/data/upload/{index}.png"},
                "annotations": annotations,
            }
        )
    label_config = LABEL_CONFIG.format(
        choices="".join(f'<Choice value="{name}"/>' for name in names)
    )

    with tempfile.TemporaryDirectory() as scratch:
        server = None
        url = os.environ.get("REDIS_URL")
        if not url:
            server = RedisServer(scratch, persist=False).start()
            url = server.url
        try:
            client = redis.Redis.from_url(url)
            store = BackendStore(client)
            settings = Settings(extractor="pixels", seed=arguments.seed)
            extractor_id = "pixels-32-rgb"

            # Cache: what the first refresh leaves behind.
            digests = {}
            for index, task in enumerate(tasks):
                digests[task["id"]] = hashlib.sha256(str(index).encode()).hexdigest()
            client.hset(
                images_key(project),
                mapping={
                    task["id"]: f'{{"url": "{task["data"]["image"]}", '
                    f'"sha256": "{digests[task["id"]]}"}}'
                    for task in tasks
                },
            )
            store.put_features(
                extractor_id,
                {
                    digests[task["id"]]: features[index]
                    for index, task in enumerate(tasks)
                },
            )

            # The other tasks sit in named folders (the service's state after the
            # person named the clusters), 20 % of them in a wrong one.
            noisy = np.where(
                rng.random(arguments.tasks) < 0.2,
                rng.integers(0, arguments.labels, arguments.tasks),
                true_labels,
            )
            client.hset(
                f"bulkshift:project:{project}:tasks",
                mapping={
                    task["id"]: json.dumps(
                        {"label": names[noisy[index]], "origin": "cluster"}
                    )
                    for index, task in enumerate(tasks)
                    if index not in labeled
                },
            )

            gateway = InMemoryLabelStudio(tasks, label_config)
            refresher = Refresher(settings, store, gateway)
            import ml_backend.features as backend_features

            # The pixels extractor's id must match the cached vectors' dimension.
            class CachedOnly:
                per_image_id = extractor_id
                per_image_dim = arguments.dim

            backend_features._extractors["pixels"] = CachedOnly()

            print(
                f"seed {arguments.seed}: {arguments.tasks} tasks, {arguments.labels} "
                f"labels, {arguments.dim}-d cached features, {arguments.labeled} "
                f"labeled by a person, classifier {settings.classifier}"
            )
            for run in range(arguments.repeat):
                started = time.perf_counter()
                outcome = refresher.run(project)
                seconds = time.perf_counter() - started
                assert outcome["n_predictions"] == arguments.tasks, outcome
                print(
                    f"retrain {run + 1}: {seconds:.2f} s "
                    f"({outcome['model_version']}, {gateway.pushed} predictions built)"
                )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
