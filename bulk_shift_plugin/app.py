"""The web service: webhook receiver, review page, shift history, cluster naming.

Pages are plain HTML with a little JavaScript and no external resources (the stack
runs offline). Images are fetched from Label Studio by the service with its token, so
the token never reaches a browser.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from threading import Lock

from flask import Flask, abort, jsonify, redirect, render_template, request, url_for

from bulk_shift_plugin.errors import (
    BulkShiftServiceError,
    LabelStudioUnavailableError,
    NamingBusyError,
    NamingError,
    ShiftBusyError,
    ShiftStateError,
    UnknownProposalError,
    UnknownShiftError,
    WebhookPayloadError,
    WebhookSecretError,
)
from bulk_shift_plugin.naming import cluster_choice, folder_choices, label_choice
from bulk_shift_plugin.service import AutoApply, BulkShiftService
from bulk_shift_plugin.webhooks import WebhookReceiver

logger = logging.getLogger(__name__)

THUMBNAIL_CACHE_SIZE = 2000
IMAGE_KEYS = ("image", "img", "url", "$image")
STATUS_OF_ERROR = {
    UnknownShiftError: 404,
    UnknownProposalError: 404,
    ShiftStateError: 409,
    ShiftBusyError: 409,
    NamingBusyError: 409,
    LabelStudioUnavailableError: 502,
}


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.is_json


def create_app(service: BulkShiftService, webhook_secret: str) -> Flask:
    """The Flask application around ``service``."""
    app = Flask(__name__)
    receiver = WebhookReceiver(service, service.redis)
    thumbnails: OrderedDict[tuple[int, int], tuple[bytes, str]] = OrderedDict()
    thumbnails_lock = Lock()

    @app.errorhandler(BulkShiftServiceError)
    def service_error(error):
        status = next(
            (code for kind, code in STATUS_OF_ERROR.items() if isinstance(error, kind)),
            400,
        )
        if wants_json():
            return jsonify({"error": str(error)}), status
        return render_template("error.html", message=str(error)), status

    @app.route("/health")
    def health():
        service.redis.ping()
        return jsonify({"status": "ok"})

    @app.route("/webhook", methods=["POST"])
    def webhook():
        try:
            outcome = receiver.receive(
                request.get_data(), request.headers, webhook_secret
            )
        except WebhookSecretError:
            logger.warning(
                "webhook refused: missing or wrong secret from %s", request.remote_addr
            )
            return jsonify({"error": "unauthorized"}), 401
        except WebhookPayloadError as error:
            return jsonify({"error": str(error)}), 400
        return jsonify(
            {
                "action": outcome.action,
                "result": outcome.result,
                "proposal": outcome.proposal_id,
            }
        )

    @app.route("/")
    def index():
        projects = sorted(service.known_projects())
        return render_template("index.html", projects=projects)

    # -- review ------------------------------------------------------------------

    @app.route("/projects/<int:project>/review")
    def review(project):
        proposals = service.proposals(project)
        if wants_json():
            return jsonify({"proposals": proposals})
        for proposal in proposals:
            proposal["items"] = list(zip(proposal["members"], proposal["confidence"]))
        return render_template(
            "review.html",
            project=project,
            proposals=proposals,
            auto_apply=service.auto_apply(project),
            message=request.args.get("message"),
        )

    @app.route(
        "/projects/<int:project>/proposals/<proposal_id>/accept", methods=["POST"]
    )
    def accept(project, proposal_id):
        proposal = service.proposal(project, proposal_id)
        if request.is_json:
            excluded = {int(t) for t in (request.get_json().get("excluded") or [])}
        elif request.form.get("all") == "1":
            excluded = set()
        else:
            kept = {int(t) for t in request.form.getlist("keep")}
            if request.form.get("up_to"):
                # "Accept up to here": the members are listed most confident first,
                # so one click on the last good image leaves out everything after it
                # (the simulated annotator's "prefix" review, one click).
                members = list(proposal["members"])
                cut = members.index(int(request.form["up_to"])) + 1
                kept &= set(members[:cut])
            excluded = set(proposal["members"]) - kept
        record = service.accept(project, proposal_id, excluded=excluded)
        if wants_json():
            return jsonify(
                {
                    "shift": record.id,
                    "status": record.status,
                    "tasks": len(record.moves),
                }
            )
        return redirect(
            url_for(
                "review",
                project=project,
                message=f"Moved {len(record.moves)} images "
                f"{record.source} → {record.destination}.",
            )
        )

    @app.route(
        "/projects/<int:project>/proposals/<proposal_id>/reject", methods=["POST"]
    )
    def reject(project, proposal_id):
        proposal = service.reject(project, proposal_id)
        if wants_json():
            return jsonify({"rejected": proposal_id})
        return redirect(
            url_for(
                "review",
                project=project,
                message=f"Rejected: {len(proposal['members'])} images stay in "
                f"{proposal['source']} (not moved to {proposal['destination']}).",
            )
        )

    @app.route("/projects/<int:project>/auto-apply", methods=["POST"])
    def set_auto_apply(project):
        setting = AutoApply(
            enabled=request.form.get("enabled") == "on",
            min_size=int(request.form.get("min_size") or 20),
            min_confidence=float(request.form.get("min_confidence") or 0.9),
        )
        service.set_auto_apply(project, setting)
        return redirect(url_for("review", project=project))

    # -- shifts ------------------------------------------------------------------

    @app.route("/projects/<int:project>/shifts")
    def shifts(project):
        records = list(reversed(service.shifts(project)))
        if wants_json():
            return jsonify(
                {
                    "shifts": [
                        {
                            "id": r.id,
                            "kind": r.kind,
                            "source": r.source,
                            "destination": r.destination,
                            "tasks": len(r.moves),
                            "status": r.status,
                            "purity": r.purity,
                            "created_at": r.created_at,
                            "undoes": r.undoes,
                            "undone_by": r.undone_by,
                            "error": r.error,
                        }
                        for r in records
                    ]
                }
            )
        return render_template(
            "shifts.html",
            project=project,
            shifts=records,
            message=request.args.get("message"),
        )

    @app.route("/projects/<int:project>/shifts/<shift_id>/undo", methods=["POST"])
    def undo(project, shift_id):
        record = service.undo(shift_id)
        if wants_json():
            return jsonify({"undo": record.id, "status": record.status})
        return redirect(
            url_for("shifts", project=project, message=f"Shift {shift_id} undone.")
        )

    @app.route("/projects/<int:project>/shifts/<shift_id>/retry", methods=["POST"])
    def retry(project, shift_id):
        record = service.retry(shift_id)
        if wants_json():
            return jsonify({"shift": record.id, "status": record.status})
        return redirect(
            url_for(
                "shifts", project=project, message=f"Shift {shift_id} {record.status}."
            )
        )

    # -- cluster naming ----------------------------------------------------------

    def render_naming(project, typed=None, merges=None, error=None, status=200):
        clusters = service.clusters(project)
        folder_names = service.folder_names(project)
        cluster_names = {cluster["name"] for cluster in clusters}
        labels = [
            name for name in service.label_names(project) if name not in cluster_names
        ]
        typed = typed if typed is not None else {}
        return (
            render_template(
                "naming.html",
                project=project,
                clusters=clusters,
                labels=labels,
                folder_names=folder_names,
                typed={
                    int(c["cluster"]): typed.get(
                        int(c["cluster"]),
                        folder_names.get(str(c["cluster"]), ""),
                    )
                    for c in clusters
                },
                merges=merges or {},
                naming=service.naming_status(project),
                error=error,
                cluster_choice=cluster_choice,
                label_choice=label_choice,
                per_cluster=int(request.args.get("show", 12)),
            ),
            status,
        )

    @app.route("/projects/<int:project>/naming")
    def naming(project):
        return render_naming(project)

    @app.route("/projects/<int:project>/naming", methods=["POST"])
    def submit_naming(project):
        if request.is_json:
            body = request.get_json() or {}
            choices = {int(c): str(n) for c, n in (body.get("names") or {}).items()}
            typed, merges = choices, {}
        else:
            typed, merges = {}, {}
            for cluster in service.clusters(project):
                number = int(cluster["cluster"])
                typed[number] = (request.form.get(f"name_{number}") or "").strip()
                merges[number] = (request.form.get(f"merge_{number}") or "").strip()
            choices = folder_choices(typed, merges)
        try:
            status = service.start_naming(project, choices)
        except NamingError as error:
            if wants_json():
                return jsonify({"error": str(error)}), 400
            return render_naming(project, typed, merges, str(error), 400)
        status_url = url_for("naming_status", project=project)
        if wants_json():
            return jsonify({**status, "status_url": status_url}), 202
        return redirect(url_for("naming_progress", project=project), code=303)

    @app.route("/projects/<int:project>/naming/status")
    def naming_status(project):
        status = service.naming_status(project)
        if status is None:
            return jsonify({"status": "none"})
        return jsonify(status)

    @app.route("/projects/<int:project>/naming/progress")
    def naming_progress(project):
        return render_template(
            "naming_progress.html",
            project=project,
            naming=service.naming_status(project),
        )

    # -- images ------------------------------------------------------------------

    @app.route("/projects/<int:project>/tasks/<int:task>/image")
    def image(project, task):
        with thumbnails_lock:
            cached = thumbnails.get((project, task))
            if cached is not None:
                thumbnails.move_to_end((project, task))
        if cached is None:
            data = service.gateway.task_data(task)
            url = next(
                (data[k] for k in IMAGE_KEYS if isinstance(data.get(k), str)), None
            )
            if url is None:
                url = next(
                    (
                        v
                        for v in data.values()
                        if isinstance(v, str) and v.startswith(("/data/", "http"))
                    ),
                    None,
                )
            if url is None:
                abort(404)
            cached = service.gateway.fetch_file(url)
            with thumbnails_lock:
                thumbnails[(project, task)] = cached
                while len(thumbnails) > THUMBNAIL_CACHE_SIZE:
                    thumbnails.popitem(last=False)
        content, content_type = cached
        response = app.response_class(content, mimetype=content_type)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app
