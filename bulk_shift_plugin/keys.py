"""Redis key names of the shared state (see docs/ARCHITECTURE.md, "Redis keys").

The ML backend owns ``labels``, ``clusters``, ``recommendations`` and
``model_version``; this service owns every other key named here.
"""

PREFIX = "bulkshift"
EVENTS_SEEN = f"{PREFIX}:events:seen"


def project_key(project: int, name: str) -> str:
    """``bulkshift:project:<project>:<name>``."""
    return f"{PREFIX}:project:{int(project)}:{name}"


def labels(project: int) -> str:
    return project_key(project, "labels")


def clusters(project: int) -> str:
    return project_key(project, "clusters")


def recommendations(project: int) -> str:
    return project_key(project, "recommendations")


def model_version(project: int) -> str:
    return project_key(project, "model_version")


def tasks(project: int) -> str:
    return project_key(project, "tasks")


def tasks_changes(project: int) -> str:
    """Stream of task ids whose entry in ``tasks`` changed (for incremental caches)."""
    return project_key(project, "tasks:changes")


def proposals(project: int) -> str:
    return project_key(project, "proposals")


def shifts(project: int) -> str:
    return project_key(project, "shifts")


def in_flight(project: int) -> str:
    """Set of task ids whose annotations this service is rewriting right now."""
    return project_key(project, "inflight")


def apply_lock(project: int) -> str:
    return project_key(project, "apply-lock")


def settings(project: int) -> str:
    """Hash of per-project service settings (auto-apply thresholds, webhook id)."""
    return project_key(project, "plugin-settings")


def shift(shift_id: str) -> str:
    return f"{PREFIX}:shift:{shift_id}"
