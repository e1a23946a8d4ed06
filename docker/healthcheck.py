"""Health checks of the Bulk Shift containers (``HEALTHCHECK`` / compose ``test``).

``python /opt/bulk-shift/docker/healthcheck.py http URL``
    Healthy when ``GET URL`` answers 200. Sends ``BASIC_AUTH_USER`` /
    ``BASIC_AUTH_PASS`` when they are set, as the ML backend may require them.
``python /opt/bulk-shift/docker/healthcheck.py worker``
    Healthy when an RQ worker of this container (same host name) is registered on the
    ML backend's queue (``BULKSHIFT_QUEUE``) of the Redis at ``REDIS_URL``.

Exit status 0 means healthy, 1 unhealthy; one line on stderr says why. Nothing secret
is printed.
"""

import base64
import os
import socket
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 5


def check_http(url: str) -> str | None:
    """Return None when ``url`` answers 200, else the reason it is unhealthy."""
    request = urllib.request.Request(url)
    user = os.environ.get("BASIC_AUTH_USER")
    password = os.environ.get("BASIC_AUTH_PASS")
    if user and password:
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        return f"{url} did not answer: {error}"
    return None if status == 200 else f"{url} answered HTTP {status}"


def check_worker() -> str | None:
    """Return None when this host's RQ worker is registered, else the reason."""
    from rq import Queue, Worker

    from bulkshift import store
    from ml_backend.config import Settings

    # The same settings the worker itself reads, so the queue name cannot drift.
    queue_name = Settings.from_environment().queue_name
    url = os.environ.get("REDIS_URL")
    if not url:
        # Without it the store would start an embedded Redis: never from a check.
        return "REDIS_URL is not set; the worker container needs it"
    connection = store.connect(url)
    hostname = socket.gethostname()
    try:
        workers = Worker.all(
            connection=connection, queue=Queue(queue_name, connection=connection)
        )
    except OSError as error:
        return f"Redis did not answer: {error}"
    if any(worker.hostname == hostname for worker in workers):
        return None
    return f"no worker of host {hostname} is registered on queue {queue_name!r}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) == 2:
        reason = check_http(argv[1])
    elif argv == ["worker"]:
        reason = check_worker()
    else:
        print("usage: healthcheck.py http URL | healthcheck.py worker", file=sys.stderr)
        return 2
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
