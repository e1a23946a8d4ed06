"""The HTTP side of the backend: label-studio-ml's Flask app, made safe.

label-studio-ml 1.0.9 supplies the Flask app and the routes Label Studio calls
(``/health``, ``/setup``, ``/predict``, ``/webhook``, …). Its own handlers are
replaced here because they send tracebacks to the client, log request headers and
bodies at DEBUG (the API token among them), and start a training process per webhook
event. Every handler below answers fast, sends back no internal detail, and leaves the
work to the worker.
"""

from __future__ import annotations

import hmac
import logging

import redis
from flask import Flask, jsonify, request
from label_studio_ml.api import init_app
from werkzeug.exceptions import HTTPException

from bulkshift import store
from ml_backend import jobs, protocol
from ml_backend.config import Settings
from ml_backend.model import BulkShiftModel

logger = logging.getLogger(__name__)

BACKEND_URL_KEY = jobs.BACKEND_URL_KEY


def _error(status: int, message: str):
    return jsonify({"status": "error", "detail": message}), status


def create_app(
    settings: Settings | None = None, client: redis.Redis | None = None
) -> Flask:
    """The backend's Flask app (one per process: label-studio-ml keeps it global)."""
    settings = settings or Settings.from_environment()
    client = client or store.connect()
    BulkShiftModel.configure(settings, client)
    app = init_app(BulkShiftModel)
    backend_store = store.BackendStore(client)

    def authenticate():
        if settings.basic_auth is None:
            return None
        supplied = request.authorization
        expected_user, expected_password = settings.basic_auth
        if (
            supplied is not None
            and supplied.type == "basic"
            and hmac.compare_digest(
                (supplied.username or "").encode(), expected_user.encode()
            )
            and hmac.compare_digest(
                (supplied.password or "").encode(), expected_password.encode()
            )
        ):
            return None
        response, status = _error(401, "authentication required")
        response.headers["WWW-Authenticate"] = 'Basic realm="bulk-shift ml backend"'
        return response, status

    def health():
        return jsonify({"status": "UP", "model_class": BulkShiftModel.__name__})

    def setup():
        payload = request.get_json(silent=True) or {}
        try:
            project = protocol.project_id(payload.get("project"))
        except protocol.ProtocolError as error:
            return _error(400, str(error))
        try:
            protocol.parse_labeling_config(payload.get("schema") or "")
        except protocol.ProtocolError as error:
            # Shown to the person in Label Studio's model settings: say what to fix.
            return _error(400, str(error))

        hostname, token = payload.get("hostname"), payload.get("access_token")
        if hostname and token and not settings.api_key:
            jobs.remember_connection(client, hostname, token)
        # The URL Label Studio reaches us at, to find the webhook it made for us.
        client.set(BACKEND_URL_KEY, request.host_url.rstrip("/"))

        version = backend_store.model_version(project)
        # Label Studio calls /setup again and again (each time it lists or checks
        # the model); only the first one of a new project asks for work.
        if version is None and not jobs.refresh_busy(client, project):
            jobs.request_refresh(client, settings, project, "setup")
        return jsonify({"model_version": version or "bulkshift-initial"})

    def predict():
        payload = request.get_json(silent=True) or {}
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            return _error(400, "the request has no list of tasks")
        model = BulkShiftModel(label_config=None)
        results = model.predict(tasks)
        version = None
        if tasks:
            try:
                version = backend_store.model_version(
                    protocol.project_id(tasks[0].get("project"))
                )
            except protocol.ProtocolError:
                pass
        return jsonify(
            {"results": results, "model_version": version or "bulkshift-initial"}
        )

    def webhook():
        payload = request.get_json(silent=True)
        if not isinstance(payload, dict) or not payload.get("action"):
            return _error(400, "a webhook event needs a JSON body with an action")
        action = payload["action"]
        if action not in protocol.REFRESH_EVENTS:
            return jsonify({"status": "ignored", "action": action}), 200
        project = protocol.webhook_project(payload)
        if project is None:
            return _error(400, f"the {action} event names no project")
        queued = jobs.request_refresh(client, settings, project, action)
        return jsonify({"status": "queued" if queued else "coalesced"}), 200

    def train():
        # Label Studio older than 1.4.1 trains through /train; treat it like
        # START_TRAINING.
        payload = request.get_json(silent=True) or {}
        try:
            project = protocol.project_id(payload.get("project"))
        except protocol.ProtocolError as error:
            return _error(400, str(error))
        jobs.request_refresh(client, settings, project, "train")
        return jsonify({}), 201

    def is_training():
        try:
            project = protocol.project_id(request.args.get("project"))
        except protocol.ProtocolError as error:
            return _error(400, str(error))
        return jsonify(
            {
                "is_training": bool(client.exists(jobs.pending_key(project))),
                "model_version": backend_store.model_version(project),
            }
        )

    def versions():
        payload = request.get_json(silent=True) or {}
        try:
            project = protocol.project_id(payload.get("project"))
        except protocol.ProtocolError as error:
            return _error(400, str(error))
        version = backend_store.model_version(project)
        return jsonify({"versions": [version] if version else []})

    def metrics():
        return jsonify({})

    app.view_functions.update(
        {
            "health": health,
            "_setup": setup,
            "_predict": predict,
            "webhook": webhook,
            "_train": train,
            "_is_training": is_training,
            "get_version": versions,
            "metrics": metrics,
        }
    )
    # Replace (not append to) the hooks, so that a second create_app in one process
    # does not stack them, and drop label-studio-ml's body-logging hooks.
    app.before_request_funcs[None] = [authenticate]
    app.after_request_funcs[None] = []
    app.error_handler_spec[None][None] = {}

    def internal_error(error):
        if isinstance(error, HTTPException):
            # 404, 405, …: werkzeug's own short answer.
            return error
        logger.exception("request %s %s failed", request.method, request.path)
        return _error(500, "internal error; see the backend's log")

    def redis_down(error):
        logger.error(
            "request %s %s: Redis is unreachable: %s",
            request.method,
            request.path,
            error,
        )
        return _error(503, "the backend's Redis is unreachable; see the backend's log")

    app.register_error_handler(redis.RedisError, redis_down)
    app.register_error_handler(Exception, internal_error)
    return app
