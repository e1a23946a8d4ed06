"""The ML backend's settings, read once from the environment.

Every variable and its default is listed in ``docs/ARCHITECTURE.md``
("Configuration"); the backend adds those in ``docs/STACK-NOTES.md`` ("The ML
backend").
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bulkshift.core.classifiers import CLASSIFIERS
from bulkshift.core.uncertainty import MEASURES


class ConfigurationError(ValueError):
    """An environment variable of the backend has a value it cannot use."""


def _positive_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"{name}={raw!r} must be a positive whole number")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} must be a number of seconds"
        ) from None


@dataclass(frozen=True)
class Settings:
    """What the backend and its worker are configured with.

    Attributes
    ----------
    label_studio_url : str
        ``LABEL_STUDIO_URL``; used when ``/setup`` has not told the backend a host yet.
    api_key : str or None
        ``LABEL_STUDIO_API_KEY``; preferred over the token Label Studio sends in
        ``/setup``. Never logged.
    extractor : str
        ``BULKSHIFT_EXTRACTOR``: ``vgg16`` (falls back to ``pixels`` without weights)
        or ``pixels``.
    classifier, uncertainty : str
        ``BULKSHIFT_CLASSIFIER`` and ``BULKSHIFT_UNCERTAINTY``, names from the core.
    n_clusters : int or None
        ``BULKSHIFT_N_CLUSTERS``; None means ``default_n_clusters(n_tasks)``.
    batch_size : int
        ``BULKSHIFT_BATCH_SIZE``: images per feature-extraction batch.
    basic_auth : (str, str) or None
        ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``; None means no authentication.
    coalesce_seconds : float
        ``BULKSHIFT_COALESCE_SECONDS``: a retrain waits until no event came for this
        long (at most 10 times as long), so a burst of events makes one retrain.
    queue_name : str
        ``BULKSHIFT_QUEUE``: the RQ queue of the backend's jobs.
    seed : int
        ``BULKSHIFT_SEED``: random state of k-means and the classifiers.
    local_files_root : Path or None
        ``LOCAL_FILES_DOCUMENT_ROOT``: Label Studio's local-files document root, when
        the backend runs on the same machine; its ``/data/local-files/?d=…`` images are
        then read from disk instead of downloaded. None downloads everything.
    fetch_threads : int
        Images downloaded at once over HTTP (Label Studio's development server gains
        little beyond 8 on two cores: 79 s for 3,000 images with 1, 62 s with 8).
    """

    label_studio_url: str = "http://127.0.0.1:8080"
    api_key: str | None = field(default=None, repr=False)
    extractor: str = "vgg16"
    classifier: str = "lr"
    uncertainty: str = "least_confidence"
    n_clusters: int | None = None
    batch_size: int = 32
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    coalesce_seconds: float = 1.0
    queue_name: str = "bulkshift-backend"
    seed: int = 0
    local_files_root: Path | None = None
    fetch_threads: int = 8

    @classmethod
    def from_environment(cls) -> Settings:
        """Read the settings; raise :class:`ConfigurationError` on a bad value."""
        extractor = os.environ.get("BULKSHIFT_EXTRACTOR") or "vgg16"
        if extractor not in ("vgg16", "pixels"):
            raise ConfigurationError(
                f"BULKSHIFT_EXTRACTOR={extractor!r} is not an extractor; use vgg16 or "
                "pixels"
            )
        classifier = os.environ.get("BULKSHIFT_CLASSIFIER") or "lr"
        if classifier not in CLASSIFIERS:
            raise ConfigurationError(
                f"BULKSHIFT_CLASSIFIER={classifier!r} is not a classifier; use one of "
                f"{', '.join(CLASSIFIERS)}"
            )
        uncertainty = os.environ.get("BULKSHIFT_UNCERTAINTY") or "least_confidence"
        if uncertainty not in MEASURES:
            raise ConfigurationError(
                f"BULKSHIFT_UNCERTAINTY={uncertainty!r} is not a measure; use one of "
                f"{', '.join(MEASURES)}"
            )

        user = os.environ.get("BASIC_AUTH_USER") or ""
        password = os.environ.get("BASIC_AUTH_PASS") or ""
        if bool(user) != bool(password):
            raise ConfigurationError(
                "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither (no "
                "authentication)"
            )

        return cls(
            label_studio_url=(
                os.environ.get("LABEL_STUDIO_URL") or cls.label_studio_url
            ).rstrip("/"),
            api_key=os.environ.get("LABEL_STUDIO_API_KEY") or None,
            extractor=extractor,
            classifier=classifier,
            uncertainty=uncertainty,
            n_clusters=_positive_int("BULKSHIFT_N_CLUSTERS", None),
            batch_size=_positive_int("BULKSHIFT_BATCH_SIZE", 32),
            basic_auth=(user, password) if user else None,
            coalesce_seconds=_float("BULKSHIFT_COALESCE_SECONDS", 1.0),
            queue_name=os.environ.get("BULKSHIFT_QUEUE") or "bulkshift-backend",
            seed=_seed(),
            local_files_root=(
                Path(os.environ["LOCAL_FILES_DOCUMENT_ROOT"])
                if os.environ.get("LOCAL_FILES_DOCUMENT_ROOT")
                else None
            ),
        )


def _seed() -> int:
    raw = os.environ.get("BULKSHIFT_SEED")
    if raw in (None, ""):
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigurationError(f"BULKSHIFT_SEED={raw!r} must be a whole number >= 0")
    return value


def configure_process(program: str, log_level: str) -> Settings:
    """Set up logging for a backend process and read its settings.

    Exits with status 2 and a one-line message naming the variable when a setting is
    unusable, before anything is started.
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO: one line per image is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return Settings.from_environment()
    except ConfigurationError as error:
        print(f"{program}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
