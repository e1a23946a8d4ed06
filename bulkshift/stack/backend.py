"""Run the ML backend's HTTP server and its RQ worker as child processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from bulkshift.stack.processes import (
    LOCALHOST,
    ChildService,
    StackError,
    free_port,
    port_in_use,
    spawn,
    wait_until,
)

logger = logging.getLogger(__name__)


class _Child(ChildService):
    """A Python module run as a child with its own environment and log file."""

    what = "child"

    def __init__(self, log_path: os.PathLike | str, environment: dict[str, str]):
        self.log_path = Path(log_path)
        self.environment = environment
        self._process: subprocess.Popen | None = None

    def describe(self) -> str:
        return self.what

    def _spawn(self, arguments: list[str]) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        environment.update(self.environment)
        self._process = spawn(
            [sys.executable, "-m", *arguments], self.log_path, environment
        )
        return self._process


class BackendServer(_Child):
    """``python -m ml_backend`` on 127.0.0.1.

    Parameters
    ----------
    log_path : path
    environment : dict
        Added to this process's environment (``REDIS_URL``, ``BASIC_AUTH_USER``, …).
    port : int, optional
        A free one when omitted.
    """

    what = "ML backend"

    def __init__(self, log_path, environment: dict[str, str], port: int | None = None):
        super().__init__(log_path, environment)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> BackendServer:
        if port_in_use(self.port):
            raise StackError(f"port {self.port} on {LOCALHOST} is already in use")
        process = self._spawn(
            ["ml_backend", "--host", LOCALHOST, "--port", str(self.port)]
        )

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
            except urllib.error.HTTPError as error:
                return error.code == 401  # up, and asking for credentials
            return True

        try:
            seconds = wait_until(answers, process, timeout, self.what, self.log_path)
        except StackError:
            self.stop()
            raise
        logger.info("ML backend ready on %s in %.1f s", self.url, seconds)
        return self


class BackendWorker(_Child):
    """``python -m ml_backend.worker`` (RQ worker of the backend's queue)."""

    what = "ML backend worker"

    def start(self) -> BackendWorker:
        self._spawn(["ml_backend.worker"])
        logger.info(
            "ML backend worker started (pid %d, log %s)", self.pid, self.log_path
        )
        return self
