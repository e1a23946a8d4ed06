"""Redis key names of the shared state, under the short names this package uses.

The names are defined once, in :mod:`bulkshift.store` (see docs/ARCHITECTURE.md,
"Redis keys"). The ML backend owns ``labels``, ``clusters``, ``recommendations`` and
``model_version``; this service owns every other key named here.
"""

from bulkshift.store import EVENTS_SEEN, PREFIX, project_key
from bulkshift.store import apply_lock_key as apply_lock
from bulkshift.store import clusters_key as clusters
from bulkshift.store import in_flight_key as in_flight
from bulkshift.store import labels_key as labels
from bulkshift.store import model_version_key as model_version
from bulkshift.store import plugin_settings_key as settings
from bulkshift.store import proposals_key as proposals
from bulkshift.store import recommendations_key as recommendations
from bulkshift.store import shift_key as shift
from bulkshift.store import shifts_key as shifts
from bulkshift.store import tasks_changes_key as tasks_changes
from bulkshift.store import tasks_key as tasks

__all__ = [
    "EVENTS_SEEN",
    "PREFIX",
    "apply_lock",
    "clusters",
    "in_flight",
    "labels",
    "model_version",
    "project_key",
    "proposals",
    "recommendations",
    "settings",
    "shift",
    "shifts",
    "tasks",
    "tasks_changes",
]
