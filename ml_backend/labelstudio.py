"""The backend's calls to Label Studio: tasks, images, predictions, project settings.

The API token is either ``LABEL_STUDIO_API_KEY`` or the one Label Studio hands the
backend in ``/setup``; it is sent only to the Label Studio host, never to another host
an image URL may name, and never logged.
"""

from __future__ import annotations

import base64
import logging
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urljoin, urlsplit

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

logger = logging.getLogger(__name__)

PREDICTIONS_PER_REQUEST = 1000
API_TIMEOUT = 120.0
IMAGE_TIMEOUT = 30.0
IMAGE_CONNECTIONS = 16


class LabelStudioError(RuntimeError):
    """A call to Label Studio failed; the message says which call and the status."""


class ImageFetchError(RuntimeError):
    """A task's image could not be downloaded."""


class LabelStudioGateway:
    """Label Studio's REST API as the backend uses it.

    Parameters
    ----------
    url : str
        Base URL of Label Studio, e.g. ``http://127.0.0.1:8080``.
    token : str
        Legacy API token (``Authorization: Token …``).
    """

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self._host = urlsplit(self.url).netloc
        self._auth = {"Authorization": f"Token {token}"}
        self.sdk = LabelStudio(base_url=self.url, api_key=token, timeout=API_TIMEOUT)
        self._http = httpx.Client(
            base_url=self.url, headers=self._auth, timeout=API_TIMEOUT
        )
        # One pool of connections for the images, shared by the reader's threads.
        # It keeps no cookies, so each request carries only what is sent here.
        self._images = httpx.Client(
            timeout=IMAGE_TIMEOUT,
            follow_redirects=False,
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            limits=httpx.Limits(max_connections=IMAGE_CONNECTIONS),
        )

    def __repr__(self) -> str:
        return f"LabelStudioGateway(url={self.url!r})"

    def close(self) -> None:
        self._http.close()
        self._images.close()

    def _request(self, what: str, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise LabelStudioError(
                f"{what}: Label Studio at {self.url} did not answer "
                f"({type(error).__name__}); is it running?"
            ) from None
        if response.status_code >= 400:
            raise LabelStudioError(
                f"{what}: Label Studio answered HTTP {response.status_code}"
                + (
                    " (check the API token)"
                    if response.status_code in (401, 403)
                    else ""
                )
            )
        return response

    # -- project ---------------------------------------------------------------------

    def project(self, project: int) -> dict:
        """The project's fields (``label_config``, ``model_version``, …)."""
        return self._request("read project", "GET", f"/api/projects/{project}").json()

    def update_project(self, project: int, **fields) -> None:
        self._request(
            "update project", "PATCH", f"/api/projects/{project}", json=fields
        )

    def tasks(self, project: int) -> list[dict]:
        """Every task of the project with its annotations, in one export."""
        return self._request(
            "export tasks",
            "GET",
            f"/api/projects/{project}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        ).json()

    # -- predictions -----------------------------------------------------------------

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Add predictions (``task``, ``result``, ``score``, ``model_version``)."""
        for start in range(0, len(predictions), PREDICTIONS_PER_REQUEST):
            chunk = predictions[start : start + PREDICTIONS_PER_REQUEST]
            try:
                self.sdk.projects.import_predictions(id=project, request=chunk)
            except (ApiError, httpx.HTTPError) as error:
                status = getattr(error, "status_code", None)
                raise LabelStudioError(
                    f"import {len(chunk)} predictions into project {project}: "
                    f"failed with {type(error).__name__} (HTTP {status})"
                ) from None

    def delete_model_version(self, project: int, model_version: str) -> int:
        """Delete the predictions of ``model_version``; return how many went."""
        response = self._request(
            "delete old predictions",
            "DELETE",
            f"/api/projects/{project}/model-versions/",
            json={"model_version": model_version},
        )
        return int(response.json().get("deleted_predictions", 0))

    # -- webhooks --------------------------------------------------------------------

    def authorize_backend_webhooks(
        self, project: int, backend_url: str, credentials: tuple[str, str]
    ) -> tuple[int, int]:
        """Give the webhook Label Studio made for the backend its basic-auth header.

        Label Studio sends the ML backend's basic-auth credentials with ``/setup`` and
        ``/predict`` but not with the webhook it creates for ``<backend>/webhook``;
        without this header the backend would refuse every event.

        Returns
        -------
        (int, int)
            How many webhooks point at the backend, and how many were updated.
        """
        webhook_url = backend_url.rstrip("/") + "/webhook"
        token = base64.b64encode(":".join(credentials).encode()).decode()
        header = {"Authorization": f"Basic {token}"}
        hooks = self._request(
            "list webhooks", "GET", "/api/webhooks/", params={"project": project}
        ).json()
        found = updated = 0
        for hook in hooks:
            if hook.get("url", "").rstrip("/") != webhook_url:
                continue
            found += 1
            if (hook.get("headers") or {}).get("Authorization") == header[
                "Authorization"
            ]:
                continue
            headers = dict(hook.get("headers") or {}, **header)
            self._request(
                "add credentials to the backend's webhook",
                "PATCH",
                f"/api/webhooks/{hook['id']}/",
                json={"headers": headers},
            )
            updated += 1
        return found, updated

    # -- images ----------------------------------------------------------------------

    def fetch_image(self, url: str) -> bytes:
        """The bytes of a task's image.

        ``/data/upload/…`` (uploaded files) and ``/data/local-files/?d=…`` (local
        storage) are relative to Label Studio and fetched with the token; an absolute
        ``http(s)`` URL is fetched with the token only if it points at Label Studio.
        Safe to call from several threads at once.

        Raises
        ------
        ImageFetchError
            With the URL and the reason (HTTP status, unsupported scheme, no answer).
        """
        if not isinstance(url, str) or not url:
            raise ImageFetchError("the task has no image URL")
        absolute = urljoin(self.url + "/", url) if url.startswith("/") else url
        parts = urlsplit(absolute)
        if parts.scheme not in ("http", "https"):
            raise ImageFetchError(
                f"cannot fetch {url[:120]!r}: only uploaded files, local files and "
                "http(s) URLs are supported"
            )
        headers = self._auth if parts.netloc == self._host else {}
        try:
            response = self._images.get(absolute, headers=headers)
        except httpx.HTTPError as error:
            raise ImageFetchError(
                f"cannot fetch {url[:120]!r}: {type(error).__name__}"
            ) from None
        if response.status_code != 200:
            raise ImageFetchError(
                f"cannot fetch {url[:120]!r}: HTTP {response.status_code}"
            )
        return response.content
