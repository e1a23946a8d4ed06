"""Reading the tasks' images: from Label Studio's document root, else over HTTP.

Label Studio serves local files (``/data/local-files/?d=<path>``) one request at a
time, about 15 images a second on this project's machines, so downloading a
3,000-image project took three minutes. When the backend runs beside Label Studio and
knows its document root (``LOCAL_FILES_DOCUMENT_ROOT``), it reads those files from
disk instead; every other URL (uploads, http(s) images) is fetched over HTTP by a few
threads at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ml_backend.labelstudio import ImageFetchError

logger = logging.getLogger(__name__)

LOCAL_FILES_PATH = "/data/local-files"
DEFAULT_FETCH_THREADS = 8


class LocalFiles:
    """Label Studio's local-files document root, read straight from disk.

    Parameters
    ----------
    document_root : path
        Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``.
    label_studio_urls : iterable of str
        The addresses of that Label Studio (the backend's ``LABEL_STUDIO_URL`` and
        the host it tells in ``/setup``, which differ behind Docker): an absolute URL
        is read from disk only when it points at one of them (another Label Studio
        has another disk).

    Notes
    -----
    A URL is read from disk only if its resolved file lies inside the document root,
    or inside a folder that a link placed directly in the root points to (that is how
    ``up`` exposes a folder from elsewhere, and Label Studio serves it the same way).
    Anything else, ``..`` and absolute paths included, is left to Label Studio, which
    applies its own checks over HTTP.
    """

    def __init__(
        self, document_root: os.PathLike | str, label_studio_urls: Iterable[str]
    ):
        self.document_root = Path(document_root).resolve()
        self._hosts = {urlsplit(url).netloc for url in label_studio_urls}
        self._allowed = self._allowed_folders()

    def __repr__(self) -> str:
        return f"LocalFiles({str(self.document_root)!r})"

    def _allowed_folders(self) -> tuple[Path, ...]:
        if not self.document_root.is_dir():
            logger.warning(
                "LOCAL_FILES_DOCUMENT_ROOT %s is not a folder; local files will be "
                "downloaded from Label Studio instead",
                self.document_root,
            )
            return ()
        linked = [
            entry.resolve()
            for entry in self.document_root.iterdir()
            if entry.is_symlink() and entry.is_dir()
        ]
        return (self.document_root, *linked)

    def path_of(self, url: str) -> Path | None:
        """The file behind a local-files URL, or None if it is not one we may read."""
        parts = urlsplit(url)
        if parts.path.rstrip("/") != LOCAL_FILES_PATH:
            return None
        if parts.netloc and parts.netloc not in self._hosts:
            return None
        values = parse_qs(parts.query).get("d")
        if not values or not values[0]:
            return None
        path = (self.document_root / values[0]).resolve()
        if not any(path.is_relative_to(folder) for folder in self._allowed):
            logger.debug("local file outside the document root left to HTTP: %s", url)
            return None
        return path


class ImageReader:
    """A task image's bytes: from disk when :class:`LocalFiles` allows, else HTTP.

    Parameters
    ----------
    fetch : callable
        ``fetch(url) -> bytes`` over HTTP (:meth:`LabelStudioGateway.fetch_image`);
        must be safe to call from several threads.
    local_files : LocalFiles or None
        None reads everything over HTTP.
    threads : int, default=8
        HTTP requests in flight at once in :meth:`read_many`.

    Attributes
    ----------
    from_disk, over_http : int
        Images read each way so far (for the refresh's log line).
    """

    def __init__(
        self,
        fetch: Callable[[str], bytes],
        local_files: LocalFiles | None = None,
        threads: int = DEFAULT_FETCH_THREADS,
    ):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.fetch = fetch
        self.local_files = local_files
        self.threads = threads
        self.from_disk = 0
        self.over_http = 0
        self._count_lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        """The bytes behind ``url``; raises what ``fetch`` raises."""
        path = self.local_files.path_of(url) if self.local_files else None
        if path is not None:
            try:
                content = path.read_bytes()
            except OSError as error:
                # Label Studio answers for a file we cannot read (missing, a folder,
                # no permission) with its own status, as it did before this shortcut.
                logger.debug("%s unreadable on disk (%s); trying HTTP", path, error)
            else:
                self._count("from_disk")
                return content
        content = self.fetch(url)
        self._count("over_http")
        return content

    def read_many(
        self, urls: Iterable[str]
    ) -> Iterator[tuple[bytes | None, Exception | None]]:
        """``(content, None)`` or ``(None, error)`` per URL, in the order given.

        Up to ``threads`` URLs are read at once; one that cannot be read
        (:class:`ImageFetchError`, :class:`OSError`) is that URL's error and never
        stops the others.
        """
        with ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="image-reader"
        ) as pool:
            yield from pool.map(self._read_one, urls)

    def _read_one(self, url: str) -> tuple[bytes | None, Exception | None]:
        try:
            return self(url), None
        except (ImageFetchError, OSError) as error:
            return None, error

    def _count(self, way: str) -> None:
        with self._count_lock:
            setattr(self, way, getattr(self, way) + 1)
