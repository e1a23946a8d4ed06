"""Settings of the service, from command-line arguments or the environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bulkshift import store

DEFAULT_LABEL_STUDIO_URL = "http://127.0.0.1:8080"
# What scripts/up.sh writes under BULKSHIFT_DATA_DIR: JSON with the token.
CREDENTIALS_FILE = "credentials.json"
DEFAULT_PORT = 9095


class ConfigError(ValueError):
    """A required setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to run.

    ``label_studio_api_key`` and ``webhook_secret`` stay out of the repr (and so out of
    logs and test reports).
    """

    redis_url: str | None
    label_studio_url: str
    label_studio_api_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    public_url: str | None = None
    projects: tuple[int, ...] = ()
    auto_apply: bool = False
    auto_apply_min_size: int = 20
    auto_apply_min_confidence: float = 0.9
    data_dir: Path = Path("./var")

    @property
    def service_url(self) -> str:
        """The URL Label Studio posts webhooks to and the pages link to."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @classmethod
    def from_environment(cls, **overrides) -> Settings:
        """Settings from the environment; keyword arguments that are not None win."""
        env = os.environ
        values = {
            # Unset: bulkshift.store.redis_url() finds the stack's embedded Redis.
            "redis_url": env.get(store.REDIS_URL_ENV) or None,
            "label_studio_url": default_label_studio_url(),
            "label_studio_api_key": env.get("LABEL_STUDIO_API_KEY", ""),
            "webhook_secret": env.get("BULKSHIFT_WEBHOOK_SECRET", ""),
            "host": env.get("BULKSHIFT_PLUGIN_HOST", "127.0.0.1"),
            "port": int(env.get("BULKSHIFT_PLUGIN_PORT", DEFAULT_PORT)),
            "public_url": env.get("BULKSHIFT_PLUGIN_URL") or None,
            "projects": tuple(
                int(p)
                for p in env.get("BULKSHIFT_PROJECTS", "").split(",")
                if p.strip()
            ),
            "auto_apply": env.get("BULKSHIFT_AUTO_APPLY", "").lower()
            in ("1", "true", "yes"),
            "auto_apply_min_size": int(env.get("BULKSHIFT_AUTO_APPLY_MIN_SIZE", 20)),
            "auto_apply_min_confidence": float(
                env.get("BULKSHIFT_AUTO_APPLY_MIN_CONFIDENCE", 0.9)
            ),
            "data_dir": store.data_dir(),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if not settings.label_studio_api_key:
            raise ConfigError(
                "no Label Studio API key: set LABEL_STUDIO_API_KEY (or pass --api-key-"
                "file); find the token under Account & Settings in Label Studio"
            )
        if not settings.webhook_secret:
            raise ConfigError(
                "no webhook secret: set BULKSHIFT_WEBHOOK_SECRET to a random string "
                "(e.g. `python -c 'import secrets; print(secrets.token_hex(16))'`)"
            )
        return settings


def default_label_studio_url() -> str:
    """``LABEL_STUDIO_URL``, else the Label Studio ``scripts/up.sh`` starts
    (127.0.0.1 on ``BULKSHIFT_LS_PORT``, default 8080)."""
    url = os.environ.get("LABEL_STUDIO_URL")
    if url:
        return url
    port = os.environ.get("BULKSHIFT_LS_PORT") or "8080"
    return f"http://127.0.0.1:{port}"


def default_credentials_file() -> Path:
    """The credentials file ``scripts/up.sh`` writes (``BULKSHIFT_DATA_DIR``)."""
    return store.data_dir() / CREDENTIALS_FILE


def read_api_key(path: Path) -> str:
    """The Label Studio API key in ``path``.

    Either a file holding only the key, or JSON with a ``"token"`` entry, such as the
    ``credentials.json`` that ``scripts/up.sh`` writes. The key is never part of an
    error message.
    """
    path = Path(path)
    try:
        text = path.read_text().strip()
    except OSError as error:
        raise ConfigError(
            f"cannot read the API key file {path} ({error.strerror}); pass a file "
            "holding the key, or the credentials.json that scripts/up.sh writes"
        ) from None
    if text.startswith("{"):
        try:
            content = json.loads(text)
        except ValueError:
            raise ConfigError(
                f"{path} starts like JSON but is not valid JSON; pass a file holding "
                'only the key, or JSON like {"token": "..."}'
            ) from None
        token = next(
            (
                content[name]
                for name in ("token", "api_key", "LABEL_STUDIO_API_KEY")
                if isinstance(content.get(name), str) and content[name].strip()
            ),
            None,
        )
        if token is None:
            raise ConfigError(
                f'{path} is JSON without a "token" entry (it has: '
                f"{', '.join(sorted(content)) or 'nothing'}); pass the "
                "credentials.json "
                "that scripts/up.sh writes, or a file holding only the key"
            )
        return token.strip()
    if not text:
        raise ConfigError(f"the API key file {path} is empty")
    if any(character.isspace() for character in text):
        raise ConfigError(
            f"the API key file {path} holds more than one word; it must hold only the "
            'key (Account & Settings in Label Studio), or be JSON with a "token"'
        )
    return text


def connect_redis(redis_url: str | None) -> redis.Redis:
    """A Redis client for ``redis_url``, or, when it is unset, for the Redis every
    process of the stack uses (:func:`bulkshift.store.redis_url`: ``REDIS_URL``, else
    the embedded redis-server under ``BULKSHIFT_DATA_DIR``)."""
    return store.connect(redis_url)
