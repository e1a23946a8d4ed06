"""The label-studio-ml model class: answers ``/predict`` from what the worker pushed.

All computing happens in the worker (:mod:`ml_backend.jobs`); a prediction request
only looks up the prediction last pushed for each task, so it answers in milliseconds
even for thousands of tasks.
"""

from __future__ import annotations

import json
import logging

import redis
from label_studio_ml.model import LabelStudioMLBase

from ml_backend import protocol
from ml_backend.config import Settings
from ml_backend.jobs import predictions_key, request_refresh

logger = logging.getLogger(__name__)


class BulkShiftModel(LabelStudioMLBase):
    """Bulk Shift's model for label-studio-ml 1.0.9 (the old ``predict``/``fit`` API).

    The process-wide Redis client and settings are set once with :meth:`configure`
    before the app serves requests.
    """

    settings: Settings | None = None
    redis: redis.Redis | None = None

    @classmethod
    def configure(cls, settings: Settings, client: redis.Redis) -> None:
        cls.settings = settings
        cls.redis = client

    def predict(self, tasks, **kwargs):
        """One result per task: ``[prediction]``, or ``[]`` while none is computed.

        A task without a prediction asks for a refresh of its project, so that it
        gets one shortly (as will every other new task).
        """
        results = []
        waiting: dict[int, int] = {}
        for task in tasks:
            try:
                project = protocol.project_id(task.get("project"))
            except protocol.ProtocolError:
                results.append([])
                continue
            raw = self.redis.hget(predictions_key(project), int(task["id"]))
            if raw is None:
                waiting[project] = waiting.get(project, 0) + 1
                results.append([])
            else:
                results.append([json.loads(raw)])
        for project, count in waiting.items():
            logger.info("project %d: %d tasks have no prediction yet", project, count)
            request_refresh(self.redis, self.settings, project, "predict")
        return results

    def fit(self, tasks, workdir=None, **kwargs):
        """Queue a retrain; label-studio-ml calls this for some webhook events."""
        event = kwargs.get("event", "fit")
        project = protocol.webhook_project(kwargs.get("data") or {})
        if project is not None:
            request_refresh(self.redis, self.settings, project, event)
        return {}
