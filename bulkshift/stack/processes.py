"""Helpers shared by the service starters: ports, starting, waiting, stopping by PID."""

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Self

logger = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"


class StackError(RuntimeError):
    """A service of the stack could not be started or stopped."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The operating system picks it; another process may still take it before the
    caller binds it, which the starters detect when the service fails to answer.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
    """Return True if something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def refuse_taken_port(port: int, host: str = LOCALHOST) -> None:
    """Raise :class:`StackError` if something already listens on ``host:port``.

    Label Studio would silently move to the next port, and a second Redis would fail
    with a message only its log shows; refusing first keeps ``url`` true.
    """
    if port_in_use(port, host):
        raise StackError(
            f"port {port} on {host} is already in use; pick another port or stop the "
            "process that holds it"
        )


def spawn(
    command: list[str],
    log_path: os.PathLike | str | None = None,
    environment: dict[str, str] | None = None,
    cwd: os.PathLike | str | None = None,
) -> subprocess.Popen:
    """Start ``command`` in its own session, its output appended to ``log_path``.

    Its own session makes its process group id its PID, so :func:`stop_process`
    reaches the helpers it forks, and nothing else. Without ``log_path`` the output
    is discarded (for programs that write their own log).
    """
    if log_path is None:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )


def wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen,
    timeout: float,
    what: str,
    log_path: os.PathLike | str,
    interval: float = 0.25,
) -> float:
    """Poll ``ready()`` until it is true; return the seconds it took.

    Raises
    ------
    StackError
        If ``process`` exits first or ``timeout`` seconds pass; the message names the
        log file to read.
    """
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise StackError(
                f"{what} exited with code {process.returncode} before it was ready; "
                f"see its log {log_path}"
            )
        try:
            if ready():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise StackError(
                f"{what} was not ready after {timeout:.0f} s; see its log {log_path} "
                "or raise the timeout"
            )
        time.sleep(interval)


def stop_process(process: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    """Terminate a child started in its own session, then kill it if it lingers.

    The child was started with ``start_new_session=True``, so its process group id is
    its PID: signalling that group reaches helpers it forked, and nothing else.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning(
            "%s (pid %d) ignored SIGTERM for %.0f s; killing it",
            what,
            process.pid,
            timeout,
        )
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        process.wait(timeout=timeout)


class ChildService:
    """A server run as a child process: its PID, stop, detach, and ``with`` support.

    Subclasses define ``start()``, which sets ``_process`` (with :func:`spawn`) and
    returns the object, and :meth:`describe`, the service's name in messages.
    """

    _process: subprocess.Popen | None = None

    def describe(self) -> str:
        """How to name this service in messages."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """PID of the running server, or None."""
        return self._process.pid if self._process else None

    def stop(self) -> None:
        """Terminate the server by its PID (its process group)."""
        if self._process is None:
            return
        stop_process(self._process, self.describe())
        self._process = None

    def detach(self) -> None:
        """Leave the server running after this object and this process are gone;
        ``stop()`` no longer reaches it (stop it by its PID)."""
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
