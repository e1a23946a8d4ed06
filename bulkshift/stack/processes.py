"""Helpers shared by the service starters: free ports, waiting, stopping by PID."""

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

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
