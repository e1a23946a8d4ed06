"""Shared fixtures: real Redis and Label Studio servers, an SDK client, test images.

The servers are started once per test session on free ports under a temporary
directory and stopped at the end. To reuse servers started elsewhere (for example once
per CI job), set

- ``BULKSHIFT_TEST_REDIS_URL`` — a Redis the tests may write to;
- ``BULKSHIFT_TEST_LS_URL`` and ``BULKSHIFT_TEST_LS_TOKEN`` — a Label Studio and its
  legacy API token, plus ``BULKSHIFT_TEST_LS_DOCUMENT_ROOT`` (its
  ``LOCAL_FILES_DOCUMENT_ROOT``, needed by tests that import local files) and
  optionally ``BULKSHIFT_TEST_LS_USERNAME`` / ``BULKSHIFT_TEST_LS_PASSWORD``.

``BULKSHIFT_TEST_LS_DATA_DIR`` keeps the started Label Studio's data in that directory
between sessions, which turns its ~50 s first start into a ~5 s restart.
"""

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bulkshift.stack.labelstudio import LabelStudioServer
from bulkshift.stack.redis_server import RedisServer


@dataclass(frozen=True)
class LabelStudioAccess:
    """How tests reach a Label Studio server."""

    url: str
    token: str = field(repr=False)
    username: str | None
    password: str | None = field(repr=False)
    document_root: Path | None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL of a real Redis server for the session."""
    url = os.environ.get("BULKSHIFT_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"), persist=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio 1.23 for the session (see the module docstring)."""
    url = os.environ.get("BULKSHIFT_TEST_LS_URL")
    if url:
        token = os.environ.get("BULKSHIFT_TEST_LS_TOKEN")
        if not token:
            pytest.fail(
                "BULKSHIFT_TEST_LS_URL is set but BULKSHIFT_TEST_LS_TOKEN is not; set "
                "both, or neither to let the tests start their own Label Studio"
            )
        document_root = os.environ.get("BULKSHIFT_TEST_LS_DOCUMENT_ROOT")
        yield LabelStudioAccess(
            url=url.rstrip("/"),
            token=token,
            username=os.environ.get("BULKSHIFT_TEST_LS_USERNAME"),
            password=os.environ.get("BULKSHIFT_TEST_LS_PASSWORD"),
            document_root=Path(document_root) if document_root else None,
        )
        return

    data_dir = os.environ.get("BULKSHIFT_TEST_LS_DATA_DIR") or tmp_path_factory.mktemp(
        "label-studio"
    )
    server = LabelStudioServer(data_dir).start()
    try:
        yield LabelStudioAccess(
            url=server.url,
            token=server.token,
            username=server.username,
            password=server.password,
            document_root=server.document_root,
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):
    """A ``label_studio_sdk.LabelStudio`` client logged in with the API token."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


# Three groups a feature extractor separates easily: hue, shape and texture differ.
IMAGE_GROUPS = ("red-disc", "green-square", "blue-stripes")


def draw_group_image(
    group: str, rng: np.random.Generator, size: int = 64
) -> Image.Image:
    """Draw one image of ``group`` with a little random jitter in place and colour."""
    rows, columns = np.mgrid[0:size, 0:size]
    pixels = np.full((size, size, 3), 235, dtype=np.float64)
    noise = rng.normal(0, 6, size=(size, size, 3))
    centre = size / 2 + rng.uniform(-4, 4, size=2)
    if group == "red-disc":
        radius = size * rng.uniform(0.28, 0.36)
        inside = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 < radius**2
        pixels[inside] = (210 + rng.uniform(-15, 15), 30, 35)
    elif group == "green-square":
        half = size * rng.uniform(0.25, 0.33)
        inside = (np.abs(rows - centre[0]) < half) & (
            np.abs(columns - centre[1]) < half
        )
        pixels[inside] = (30, 170 + rng.uniform(-15, 15), 60)
    elif group == "blue-stripes":
        period = int(rng.integers(6, 10))
        inside = ((columns + int(rng.integers(0, period))) // (period // 2)) % 2 == 0
        pixels[inside] = (40, 60, 200 + rng.uniform(-15, 15))
    else:
        raise ValueError(f"unknown image group {group!r}; use one of {IMAGE_GROUPS}")
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


@dataclass
class ImageSet:
    """Generated PNG files in one folder, with the group each was drawn from."""

    directory: Path
    paths: list[Path]
    groups: list[str]

    def make_broken(self, name: str = "broken.png") -> Path:
        """Write a file named like a PNG that no image decoder can read."""
        path = self.directory / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 8)
        return path


def make_image_set(directory: Path, n_per_group: int = 10, seed: int = 0) -> ImageSet:
    """Write ``n_per_group`` PNGs of each of the three groups into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, groups = [], []
    for group in IMAGE_GROUPS:
        for index in range(n_per_group):
            path = directory / f"{group}-{index:02d}.png"
            draw_group_image(group, rng).save(path)
            paths.append(path)
            groups.append(group)
    return ImageSet(directory=directory, paths=paths, groups=groups)


@pytest.fixture
def image_set(request, tmp_path):
    """30 PNGs in 3 visually distinct groups (10 each).

    When the test also uses ``label_studio`` and its document root is known, the
    folder is created under that root, so a Local files storage can import it.
    """
    root = tmp_path
    if "label_studio" in request.fixturenames:
        access = request.getfixturevalue("label_studio")
        if access.document_root is not None:
            root = access.document_root
    return make_image_set(root / f"images-{uuid.uuid4().hex[:8]}")
