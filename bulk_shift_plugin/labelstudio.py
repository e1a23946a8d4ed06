"""The service's boundary with Label Studio: every call goes through label-studio-sdk.

Label Studio 1.23.2 open-source has no bulk annotation endpoint. The fastest correct way
to give many tasks a new label (docs/.../label-studio.md, "Changing the label of many
tasks") is three Data Manager calls that *replace* the annotations:
``delete_tasks_annotations`` -> ``import_predictions`` (our own ``model_version``) ->
``predictions_to_annotations`` (that ``model_version``), then deleting the helper
predictions by model version so they never mix with the backend's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.etree import ElementTree

import httpx
from label_studio_sdk import LabelStudio

from bulk_shift_plugin.errors import LabelingConfigError, LabelStudioUnavailableError

logger = logging.getLogger(__name__)

# Prefix of the model_version of the helper predictions a shift imports; never the
# backend's, so its predictions and the score column are left alone.
HELPER_MODEL_VERSION_PREFIX = "bulkshift-shift-"
WEBHOOK_ACTIONS = [
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED",
]
SECRET_HEADER = "X-Bulkshift-Secret"
CHUNK = 1000
# Task ids per export request; they travel in the URL.
READ_CHUNK = 500


@dataclass(frozen=True)
class ChoicesControl:
    """The ``<Choices>`` tag the service writes labels into."""

    from_name: str
    to_name: str
    labels: list[str]


@dataclass(frozen=True)
class TaskAnnotations:
    """The annotations a task has in Label Studio: ``[(annotation id, label)]``."""

    task: int
    annotations: list[tuple[int, str | None]]

    @property
    def label(self) -> str | None:
        """The label of the newest annotation, or None without annotations."""
        return self.annotations[-1][1] if self.annotations else None


def choice_of(
    result: Iterable[dict] | None, from_name: str | None = None
) -> str | None:
    """The first chosen label in an annotation ``result``, or None."""
    for region in result or ():
        if region.get("type") != "choices":
            continue
        if from_name is not None and region.get("from_name") != from_name:
            continue
        choices = (region.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def choices_result(control: ChoicesControl, label: str) -> list[dict]:
    return [
        {
            "from_name": control.from_name,
            "to_name": control.to_name,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def parse_choices(label_config: str) -> ChoicesControl:
    """Find the first ``<Choices>`` tag of a labeling config."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise LabelingConfigError(
            f"the project's labeling config is not valid XML ({error}); fix it in "
            "the project settings"
        ) from None
    for element in root.iter("Choices"):
        return ChoicesControl(
            from_name=element.get("name", ""),
            to_name=element.get("toName", ""),
            labels=[c.get("value", "") for c in element.iter("Choice")],
        )
    raise LabelingConfigError(
        "the project's labeling config has no <Choices> tag; the bulk-shift service "
        'needs one, e.g. <Choices name="label" toName="image">'
    )


def with_choices(label_config: str, names: list[str]) -> str:
    """``label_config`` with the first ``<Choices>`` tag's options set to ``names``."""
    root = ElementTree.fromstring(label_config)
    element = next(root.iter("Choices"), None)
    if element is None:
        parse_choices(label_config)  # raises the explanatory error
    kept_attributes = {c.get("value"): dict(c.attrib) for c in element.iter("Choice")}
    for child in list(element):
        if child.tag == "Choice":
            element.remove(child)
    for name in names:
        attributes = kept_attributes.get(name, {"value": name})
        ElementTree.SubElement(element, "Choice", attributes)
    return ElementTree.tostring(root, encoding="unicode")


class LabelStudioGateway:
    """Calls to one Label Studio instance.

    Parameters
    ----------
    url : str
        Label Studio's base URL.
    api_key : str
        A legacy token or a personal access token; never logged.
    timeout : float
        Seconds per HTTP request.
    """

    def __init__(self, url: str, api_key: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.client = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self._controls: dict[int, ChoicesControl] = {}

    def __repr__(self) -> str:
        return f"LabelStudioGateway(url={self.url!r})"

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except httpx.LocalProtocolError:
            # Raised before anything is sent, mostly for a header value with line
            # breaks or quotes: an API key file with more than the key in it.
            raise LabelStudioUnavailableError(
                f"could not send the request to {what} to Label Studio at {self.url}: "
                "the API key is not a valid header value; pass only the key (or the "
                "credentials.json that scripts/up.sh writes)"
            ) from None
        except httpx.TransportError as error:
            raise LabelStudioUnavailableError(
                f"Label Studio at {self.url} did not answer while trying to {what} "
                f"({type(error).__name__}); check that it is running, then retry"
            ) from None
        except Exception as error:  # the SDK's ApiError carries the status code
            status = getattr(error, "status_code", None)
            if status is None:
                raise
            raise LabelStudioUnavailableError(
                f"Label Studio at {self.url} answered {status} while trying to {what}; "
                "check the project id and the API key"
            ) from None

    # -- project and labeling config ----------------------------------------------

    def choices_control(self, project: int, refresh: bool = False) -> ChoicesControl:
        if refresh or project not in self._controls:
            details = self._call("read the project", self.client.projects.get, project)
            self._controls[project] = parse_choices(details.label_config or "")
        return self._controls[project]

    def set_label_names(self, project: int, names: list[str]) -> ChoicesControl:
        """Write ``names`` as the options of the project's ``<Choices>`` tag."""
        details = self._call("read the project", self.client.projects.get, project)
        config = with_choices(details.label_config or "", names)
        self._call(
            "update the labeling config",
            self.client.projects.update,
            project,
            label_config=config,
        )
        self._controls[project] = parse_choices(config)
        logger.info(
            "project %s: labeling config now has %d labels", project, len(names)
        )
        return self._controls[project]

    # -- reading annotations -------------------------------------------------------

    def task_annotations(
        self, project: int, task_ids: Iterable[int] | None = None
    ) -> dict[int, TaskAnnotations]:
        """Every annotation of the given tasks (or of the whole project).

        Read through the export endpoint: for 500 tasks it answers in ~1.5 s where the
        Data Manager's task list with annotations takes ~4.5 s.
        """
        control = self.choices_control(project)
        found: dict[int, TaskAnnotations] = {}
        if task_ids is None:
            chunks: list[list[int] | None] = [None]
        else:
            task_ids = [int(t) for t in task_ids]
            chunks = [
                task_ids[start : start + READ_CHUNK]
                for start in range(0, len(task_ids), READ_CHUNK)
            ]
        for chunk in chunks:
            params = {"exportType": "JSON", "download_all_tasks": "true"}
            if chunk is not None:
                params["ids[]"] = chunk

            def read(params=params):
                response = self.client._client_wrapper.httpx_client.request(
                    f"api/projects/{int(project)}/export", method="GET", params=params
                )
                if response.status_code >= 400:
                    error = RuntimeError("export failed")
                    error.status_code = response.status_code
                    raise error
                return response.json()

            for task in self._call("read annotations", read):
                annotations = sorted(
                    task.get("annotations") or [], key=lambda a: a["id"]
                )
                found[int(task["id"])] = TaskAnnotations(
                    task=int(task["id"]),
                    annotations=[
                        (int(a["id"]), choice_of(a.get("result"), control.from_name))
                        for a in annotations
                        if not a.get("was_cancelled")
                    ],
                )
        return found

    def task_data(self, task_id: int) -> dict:
        task = self._call("read a task", self.client.tasks.get, task_id)
        return dict(task.data or {})

    def fetch_file(self, url: str) -> tuple[bytes, str]:
        """Download a task's file (relative URLs resolve against Label Studio, with
        the token) and return ``(content, content type)``."""
        if url.startswith("/"):
            url = self.url + url
        elif not url.startswith(self.url + "/"):
            raise LabelStudioUnavailableError(
                "the task's image is not served by Label Studio; only files under "
                f"{self.url} are proxied"
            )
        try:
            response = httpx.get(
                url,
                headers={"Authorization": f"Token {self._api_key}"},
                timeout=30.0,
                follow_redirects=True,
            )
        except httpx.TransportError as error:
            raise LabelStudioUnavailableError(
                f"Label Studio at {self.url} did not answer while fetching an image "
                f"({type(error).__name__})"
            ) from None
        if response.status_code != 200:
            raise LabelStudioUnavailableError(
                f"Label Studio answered {response.status_code} for a task's image"
            )
        return response.content, response.headers.get("content-type", "image/png")

    # -- the fast path -------------------------------------------------------------

    def delete_annotations(self, project: int, task_ids: list[int]) -> None:
        for start in range(0, len(task_ids), CHUNK):
            chunk = task_ids[start : start + CHUNK]
            self._call(
                "delete annotations",
                self.client.actions.create,
                id="delete_tasks_annotations",
                project=project,
                selected_items={"all": False, "included": chunk},
            )

    def import_label_predictions(
        self, project: int, labels: Mapping[int, str], model_version: str
    ) -> None:
        control = self.choices_control(project)
        items = [
            {
                "task": int(task),
                "result": choices_result(control, label),
                "score": 1.0,
                "model_version": model_version,
            }
            for task, label in labels.items()
        ]
        for start in range(0, len(items), CHUNK):
            self._call(
                "import predictions",
                self.client.projects.import_predictions,
                project,
                request=items[start : start + CHUNK],
            )

    def predictions_to_annotations(
        self, project: int, task_ids: list[int], model_version: str
    ) -> None:
        for start in range(0, len(task_ids), CHUNK):
            self._call(
                "turn predictions into annotations",
                self.client.actions.create,
                id="predictions_to_annotations",
                project=project,
                selected_items={
                    "all": False,
                    "included": task_ids[start : start + CHUNK],
                },
                request_options={
                    "additional_body_parameters": {"model_version": model_version}
                },
            )

    def delete_model_version(self, project: int, model_version: str) -> int:
        """Delete every prediction of ``model_version``; return how many."""

        def delete():
            # The SDK has no method for this endpoint; its HTTP client still carries
            # the base URL and the credentials.
            response = self.client._client_wrapper.httpx_client.request(
                f"api/projects/{int(project)}/model-versions/",
                method="DELETE",
                json={"model_version": model_version},
            )
            if response.status_code >= 400:
                error = RuntimeError("model version delete failed")
                error.status_code = response.status_code
                raise error
            return response.json()

        answer = self._call("delete helper predictions", delete)
        return int((answer or {}).get("deleted_predictions", 0))

    def helper_model_versions(self, project: int) -> list[str]:
        """The helper prediction sets still in the project (left by a failure)."""

        def read():
            response = self.client._client_wrapper.httpx_client.request(
                f"api/projects/{int(project)}/model-versions/", method="GET"
            )
            return response.json()

        versions = self._call("list model versions", read) or {}
        names = versions.keys() if isinstance(versions, dict) else versions
        return [v for v in names if str(v).startswith(HELPER_MODEL_VERSION_PREFIX)]

    def link_review_page(self, project: int, review_url: str) -> None:
        """Add a link to the review page to the project's description (once)."""
        details = self._call("read the project", self.client.projects.get, project)
        description = details.description or ""
        if review_url in description:
            return
        line = f"Bulk-shift proposals: {review_url}"
        self._call(
            "update the project description",
            self.client.projects.update,
            project,
            description=f"{description}\n\n{line}".strip(),
        )

    # -- webhooks ------------------------------------------------------------------

    def register_webhook(self, project: int, url: str, secret: str) -> int:
        """Create (or reuse) the project's webhook to ``url`` with the secret header."""
        existing = self._call(
            "list webhooks", self.client.webhooks.list, project=str(project)
        )
        for hook in existing or []:
            if getattr(hook, "url", None) == url:
                self._call(
                    "update the webhook",
                    self.client.webhooks.update,
                    hook.id,
                    url=url,
                    send_payload=True,
                    send_for_all_actions=False,
                    actions=WEBHOOK_ACTIONS,
                    headers={SECRET_HEADER: secret},
                    is_active=True,
                )
                return int(hook.id)
        hook = self._call(
            "create the webhook",
            self.client.webhooks.create,
            url=url,
            project=project,
            send_payload=True,
            send_for_all_actions=False,
            actions=WEBHOOK_ACTIONS,
            headers={SECRET_HEADER: secret},
            is_active=True,
        )
        logger.info("project %s: webhook %s registered", project, hook.id)
        return int(hook.id)


def helper_model_version(shift_id: str, attempt: int) -> str:
    """The helper predictions' model version for one attempt of one shift."""
    return f"{HELPER_MODEL_VERSION_PREFIX}{shift_id}-{attempt}"
