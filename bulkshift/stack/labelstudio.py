"""Run Label Studio 1.23 as a child process bound to 127.0.0.1.

The environment set here is the one that lets the rest of the stack work without a
person clicking anything: a fixed user and legacy API token, local files served from a
document root, webhooks and ML backends allowed on localhost, and no calls home.
"""

import json
import logging
import os
import secrets
import shutil
import sys
import urllib.request
from pathlib import Path

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

DEFAULT_USERNAME = "bulkshift@localhost.local"
CREDENTIALS_FILE = "credentials.json"
LABEL_STUDIO_SETTINGS = "bulkshift.stack.ls_settings"


def find_label_studio() -> Path:
    """Return the ``label-studio`` command of this Python environment.

    Raises
    ------
    StackError
        If Label Studio is not installed.
    """
    beside_python = Path(sys.executable).parent / "label-studio"
    if beside_python.exists():
        return beside_python
    on_path = shutil.which("label-studio")
    if on_path:
        return Path(on_path)
    raise StackError(
        "the label-studio command was not found; install the services extra: "
        "pip install 'bulk-shift[services]'"
    )


class LabelStudioServer(ChildService):
    """A Label Studio server with a known user and API token.

    Parameters
    ----------
    data_dir : path
        Everything Label Studio writes goes here: its database and media
        (``label-studio/``), its HOME (``home/``), its log ``label-studio.log`` and the
        credentials file. An existing directory is reused: the first start on a fresh
        database takes about 50 s, a restart about 5 s.
    port : int, optional
        TCP port; a free one is picked when omitted.
    username, password, token : str, optional
        The account created on the first start. ``token`` is the legacy API token (40
        hex digits). Omitted values are taken from the credentials file of a reused
        ``data_dir``, else generated. They only take effect on the first start: Label
        Studio keeps the user it created.
    document_root : path, optional
        Root of the local files Label Studio may serve (``/data/local-files/?d=…``);
        defaults to ``data_dir/files``.

    Notes
    -----
    The token is written to ``data_dir/credentials.json`` (mode 600) so that a restart
    and the other services can find it; it is never logged.
    """

    def __init__(
        self,
        data_dir: os.PathLike | str,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        document_root: os.PathLike | str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        saved = self._read_credentials()
        self.username = username or saved.get("username") or DEFAULT_USERNAME
        self.password = password or saved.get("password") or secrets.token_urlsafe(16)
        self.token = token or saved.get("token") or secrets.token_hex(20)
        self.document_root = Path(
            document_root or saved.get("document_root") or self.data_dir / "files"
        ).resolve()
        self.log_path = self.data_dir / "label-studio.log"
        self.executable = find_label_studio()
        self._process = None

    def __repr__(self) -> str:
        # The token and password stay out of reprs, which end up in test reports.
        return f"LabelStudioServer(url={self.url!r}, data_dir={str(self.data_dir)!r})"

    def describe(self) -> str:
        return f"Label Studio on port {self.port}"

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def credentials_path(self) -> Path:
        """The file with the username, password and API token (mode 600)."""
        return self.data_dir / CREDENTIALS_FILE

    @property
    def base_data_dir(self) -> Path:
        """Where Label Studio keeps its SQLite database and media."""
        return self.data_dir / "label-studio"

    def _read_credentials(self) -> dict:
        path = self.data_dir / CREDENTIALS_FILE
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def _write_credentials(self) -> None:
        path = self.data_dir / CREDENTIALS_FILE
        content = {
            "username": self.username,
            "password": self.password,
            "token": self.token,
            "document_root": str(self.document_root),
        }
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)
        path.write_text(json.dumps(content, indent=2))

    def environment(self) -> dict[str, str]:
        """The environment Label Studio runs with (contains the token: do not log)."""
        environment = dict(os.environ)
        environment.update(
            {
                # Without its own HOME and data dir it writes under ~/.local/share.
                "HOME": str(self.data_dir / "home"),
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.base_data_dir),
                # The host Label Studio tells ML backends in /setup; without it,
                # "localhost", which may resolve to ::1 where nothing listens.
                "LABEL_STUDIO_HOST": self.url,
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_USER_TOKEN": self.token,
                # The token handed to ML backends in /setup is the legacy one, and it
                # only works when the organisation is created with legacy tokens on.
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                # Both default to refusing 127.0.0.1, where our webhooks and ML
                # backend live.
                "SSRF_PROTECTION_ENABLED": "false",
                "ML_BLOCK_LOCAL_IP": "false",
                "COLLECT_ANALYTICS": "false",
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return environment

    def _make_database_private(self) -> None:
        """Mode 600 for the SQLite files Label Studio created (it uses the umask)."""
        for path in self.base_data_dir.glob("label_studio.sqlite3*"):
            os.chmod(path, 0o600)

    def is_healthy(self) -> bool:
        """Return True if ``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 180.0) -> "LabelStudioServer":
        """Start Label Studio and wait until ``/health`` answers.

        Raises
        ------
        StackError
            If the port is taken, or the server exits or stays unhealthy for
            ``timeout`` seconds (the message names the log file).
        """
        if self._process is not None and self._process.poll() is None:
            return self

        # Label Studio silently moves to the next port when its port is taken.
        refuse_taken_port(self.port)
        for directory in (
            self.data_dir,
            self.base_data_dir,
            self.data_dir / "home",
            self.document_root,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_credentials()
        # The database holds the API token and the password hash: private.
        for private in (self.base_data_dir, self.data_dir / "home"):
            os.chmod(private, 0o700)
        first_start = not (self.base_data_dir / "label_studio.sqlite3").exists()

        command = [
            str(self.executable),
            "start",
            "--no-browser",
            "--internal-host",
            LOCALHOST,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.base_data_dir),
            "--enable-legacy-api-token",
        ]
        environment = self.environment()
        # Label Studio's settings without the doubled log lines and with a longer
        # SQLite lock timeout (bulkshift.stack.ls_settings). Set only here, where
        # Label Studio runs in this project's Python environment: the Label Studio
        # image of docker-compose.yml cannot import it.
        environment["DJANGO_SETTINGS_MODULE"] = LABEL_STUDIO_SETTINGS
        self._process = spawn(command, self.log_path, environment, cwd=self.data_dir)
        logger.info(
            "starting Label Studio on %s (pid %d, %s database, log %s)",
            self.url,
            self._process.pid,
            "new" if first_start else "existing",
            self.log_path,
        )
        try:
            seconds = wait_until(
                self.is_healthy,
                self._process,
                timeout,
                self.describe(),
                self.log_path,
                interval=0.5,
            )
        except StackError:
            self.stop()
            raise
        self.startup_seconds = seconds
        self._make_database_private()
        logger.info("Label Studio ready on %s in %.1f s", self.url, seconds)
        return self
