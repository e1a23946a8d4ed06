"""Label Studio's own settings with two changes, for the Label Studio that ``up`` runs.

Selected with ``DJANGO_SETTINGS_MODULE`` by :class:`LabelStudioServer`; Label Studio
imports this module in its own process.

- Its ``django`` logger has a handler of its own and also passes each record on to
  the root logger's identical handler, so every request line was written twice.
- SQLite gives up on a locked database after 5 s by default; the backend's worker
  writes thousands of predictions at once, and a storage sync or an annotation saved
  meanwhile failed with "database is locked". Wait up to 30 s instead.
"""

# Label Studio's settings module reads django.conf.settings while it is imported;
# Django then builds them from this module, half-imported: give it the base settings
# first, from the module Label Studio itself uses (its package folder is on sys.path).
from core.settings.base import *
from label_studio.core.settings.label_studio import *
from label_studio.core.settings.label_studio import DATABASES, LOGGING

SQLITE_TIMEOUT_SECONDS = 30

LOGGING["loggers"].setdefault("django", {})["propagate"] = False

for _database in DATABASES.values():
    if _database.get("ENGINE", "").endswith("sqlite3"):
        _database.setdefault("OPTIONS", {})["timeout"] = SQLITE_TIMEOUT_SECONDS
