"""What Label Studio sends the backend and what the backend sends back.

Pure functions over the JSON of Label Studio 1.23 (``/setup``, ``/predict``,
``/webhook`` payloads, labeling configs, tasks): no network, no Redis, so they are
tested on payloads recorded from a real Label Studio (``tests/fixtures/ls_payloads``).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

# Events after which the current labels may have changed: each asks for a retrain.
# label-studio-ml 1.0.9 ignores START_TRAINING and the plural (bulk) events; we do not.
TRAINING_EVENTS = frozenset(
    {
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATION_DELETED",
        "ANNOTATIONS_CREATED",
        "ANNOTATIONS_DELETED",
        "START_TRAINING",
    }
)

# New tasks need features and a prediction, which the same refresh job provides.
# PROJECT_UPDATED is left out on purpose: the refresh itself updates the project
# (model version, labeling config), which would trigger it again, forever.
REFRESH_EVENTS = TRAINING_EVENTS | {"TASKS_CREATED", "TASKS_DELETED"}

RECOMMENDATIONS_CONTROL = "bulkshift_recommended"

# The recommendations box of Label Studio 1.23.2's <TextArea>: it shows the
# prediction's text, and its input field only while the control has fewer than
# maxSubmissions texts, so with one text (the recommendations) no empty, editable
# field appears; editable="false" keeps the text itself from being edited.
RECOMMENDATIONS_CLASS = "bulkshift-recommended"
RECOMMENDATIONS_BOX = {
    "editable": "false",
    "maxSubmissions": "1",
    "showSubmitButton": "false",
    "rows": "4",
}

# The names of the k-means folders, numbered from 1 and zero-padded so that they sort
# as numbers. Label Studio refuses a <Choices> without a <Choice>, so a new project's
# labeling config offers FIRST_FOLDER_NAME, which the first refresh then uses (up to
# 99 folders) instead of adding it as a stray label.
FOLDER_NAME_FORMAT = "Cluster {number:0{width}d}"


def folder_name(cluster: int, n_clusters: int) -> str:
    """The name of folder ``cluster`` (from 0) of ``n_clusters``: ``Cluster 01`` …"""
    width = max(2, len(str(n_clusters)))
    return FOLDER_NAME_FORMAT.format(number=cluster + 1, width=width)


FIRST_FOLDER_NAME = folder_name(0, 2)


class ProtocolError(ValueError):
    """A payload or labeling config the backend cannot work with."""


@dataclass(frozen=True)
class LabelingInterface:
    """The parts of a labeling config the backend reads and writes.

    Attributes
    ----------
    image_name : str
        ``name`` of the ``<Image>`` tag (the ``to_name`` of every result).
    image_key : str
        The task data key holding the image URL (``value="$image"`` -> ``image``).
    choices_name : str
        ``name`` of the first ``<Choices>`` tag (the ``from_name`` of a label).
    labels : list of str
        Its options, in order.
    has_recommendations : bool
        Whether the config shows the backend's recommended labels
        (a ``<TextArea name="bulkshift_recommended">``).
    """

    image_name: str
    image_key: str
    choices_name: str
    labels: list[str]
    has_recommendations: bool


def parse_labeling_config(label_config: str) -> LabelingInterface:
    """Find the image and the label choices of a labeling config.

    Raises
    ------
    ProtocolError
        If the config is not XML, or lacks an ``<Image value="$…">`` or a
        ``<Choices>`` tag pointing at it.
    """
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise ProtocolError(f"the labeling config is not valid XML: {error}") from None

    image = next(
        (tag for tag in root.iter("Image") if (tag.get("value") or "").startswith("$")),
        None,
    )
    if image is None:
        raise ProtocolError(
            'the labeling config has no <Image name="…" value="$…"> tag; the Bulk '
            "Shift backend sorts images and needs one"
        )
    choices = next(
        (tag for tag in root.iter("Choices") if tag.get("toName") == image.get("name")),
        None,
    )
    if choices is None:
        raise ProtocolError(
            f'the labeling config has no <Choices toName="{image.get("name")}"> tag; '
            f'add one, e.g. <Choices name="label" toName="{image.get("name")}" '
            'choice="single"/>'
        )
    return LabelingInterface(
        image_name=image.get("name", ""),
        image_key=image.get("value", "")[1:],
        choices_name=choices.get("name", ""),
        labels=[choice.get("value", "") for choice in choices.iter("Choice")],
        has_recommendations=any(
            tag.get("name") == RECOMMENDATIONS_CONTROL for tag in root.iter("TextArea")
        ),
    )


def with_labels_and_recommendations(label_config: str, labels: list[str]) -> str:
    """The config with ``labels`` appended to its choices where missing, and the
    read-only recommendations box added when absent.

    Existing choices keep their place: a person may have named some already.
    """
    interface = parse_labeling_config(label_config)
    root = ElementTree.fromstring(label_config)
    choices = next(
        tag for tag in root.iter("Choices") if tag.get("name") == interface.choices_name
    )
    present = set(interface.labels)
    for label in labels:
        if label not in present:
            ElementTree.SubElement(choices, "Choice", {"value": label})
            present.add(label)

    blocks = [
        tag
        for tag in root.iter("View")
        if tag.get("className") == RECOMMENDATIONS_CLASS
    ]
    if not blocks:
        # Boxes of earlier versions (a bare TextArea after a Header) showed an
        # empty input field: replace them.
        _remove_old_boxes(root)
        blocks = [_recommendations_block(root, interface.image_name)]
    for box in blocks[0].iter("TextArea"):
        box.attrib.update(RECOMMENDATIONS_BOX)
    return ElementTree.tostring(root, encoding="unicode")


def _recommendations_block(root, image_name: str):
    """Append the recommendations: a header and a text box without an input field.

    A text box is what Label Studio 1.23 shows of a prediction besides the choice
    itself (a prediction's meta and score are not shown in a task). With
    maxSubmissions="1" its input field is gone once the text is there, but it still
    appears over an annotation without the text (one the bulk-shift service wrote):
    the <Style> hides it, in this block only.
    """
    block = ElementTree.SubElement(root, "View", {"className": RECOMMENDATIONS_CLASS})
    block.text = block.tail = "\n"
    style = ElementTree.SubElement(block, "Style")
    # The box's input field (Label Studio 1.23.2 marks its form with these test ids).
    style.text = (
        f".{RECOMMENDATIONS_CLASS} [data-testid=textarea-form], "
        f".{RECOMMENDATIONS_CLASS} [data-testid=textarea-region-form] "
        "{ display: none; }"
    )
    ElementTree.SubElement(block, "Header", {"value": "Recommended labels"})
    ElementTree.SubElement(
        block,
        "TextArea",
        {"name": RECOMMENDATIONS_CONTROL, "toName": image_name, **RECOMMENDATIONS_BOX},
    )
    for child in block:
        child.tail = "\n"
    return block


def _remove_old_boxes(root) -> None:
    parents = {child: parent for parent in root.iter() for child in parent}
    for box in [
        t for t in root.iter("TextArea") if t.get("name") == RECOMMENDATIONS_CONTROL
    ]:
        parent = parents[box]
        siblings = list(parent)
        position = siblings.index(box)
        before = siblings[position - 1] if position else None
        if (
            before is not None
            and before.tag == "Header"
            and (before.get("value") == "Recommended labels")
        ):
            parent.remove(before)
        parent.remove(box)


def same_config(first: str, second: str) -> bool:
    """Whether two labeling configs have the same tags and attributes (whitespace
    and attribute order aside)."""

    def canonical(config: str):
        def walk(tag):
            return (tag.tag, sorted(tag.attrib.items()), [walk(c) for c in tag])

        return walk(ElementTree.fromstring(config))

    try:
        return canonical(first) == canonical(second)
    except ElementTree.ParseError:
        return first == second


def project_id(project: object) -> int:
    """The project id of a payload's ``project`` field.

    ``/setup`` and ``/predict`` send ``"<id>.<created timestamp>"``; webhooks send the
    serialized project (a dict) or, from older senders, its id.

    Raises
    ------
    ProtocolError
        If no project id can be read.
    """
    if isinstance(project, dict):
        project = project.get("id")
    if isinstance(project, bool):
        project = None
    if isinstance(project, int):
        return project
    if isinstance(project, str):
        head = project.split(".", 1)[0]
        if head.isdigit():
            return int(head)
    raise ProtocolError(f"cannot read a project id from {type(project).__name__} value")


def webhook_project(payload: dict) -> int | None:
    """The project a webhook event is about, or None if it names none.

    Most events carry the serialized project; the annotation and task events also
    carry the project id inside each annotation or task (a list for bulk events).
    """
    candidates = [payload.get("project")]
    for key in ("annotation", "annotations", "task", "tasks"):
        items = payload.get(key)
        items = items if isinstance(items, list) else [items]
        candidates += [item.get("project") for item in items if isinstance(item, dict)]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            return project_id(candidate)
        except ProtocolError:
            continue
    return None


def annotation_label(annotation: dict, choices_name: str) -> str | None:
    """The label a (not cancelled) annotation gives, or None."""
    if annotation.get("was_cancelled"):
        return None
    for region in annotation.get("result") or []:
        if region.get("from_name") != choices_name or region.get("type") != "choices":
            continue
        chosen = (region.get("value") or {}).get("choices") or []
        if chosen:
            return str(chosen[0])
    return None


def task_label(task: dict, choices_name: str) -> str | None:
    """The label of a task's most recently updated annotation that has one."""
    annotations = sorted(
        task.get("annotations") or [],
        key=lambda annotation: (
            annotation.get("updated_at") or annotation.get("created_at") or "",
            annotation.get("id") or 0,
        ),
        reverse=True,
    )
    for annotation in annotations:
        label = annotation_label(annotation, choices_name)
        if label is not None:
            return label
    return None


def choice_region(interface: LabelingInterface, label: str) -> dict:
    """A prediction/annotation result region choosing ``label``."""
    return {
        "from_name": interface.choices_name,
        "to_name": interface.image_name,
        "type": "choices",
        "value": {"choices": [label]},
    }


def recommendations_text(labels: list[str], probabilities: list[float]) -> str:
    """``"1. socks 82%"`` lines, best first."""
    return "\n".join(
        f"{rank}. {label} {probability:.0%}"
        for rank, (label, probability) in enumerate(zip(labels, probabilities), start=1)
    )


def prediction(
    interface: LabelingInterface,
    label: str,
    score: float,
    model_version: str,
    recommendations: tuple[list[str], list[float]] | None = None,
) -> dict:
    """One Label Studio prediction (without its task id)."""
    result = [choice_region(interface, label)]
    if recommendations is not None and interface.has_recommendations:
        result.append(
            {
                "from_name": RECOMMENDATIONS_CONTROL,
                "to_name": interface.image_name,
                "type": "textarea",
                "value": {"text": [recommendations_text(*recommendations)]},
                "readonly": True,
            }
        )
    return {
        "result": result,
        "score": round(float(score), 6),
        "model_version": model_version,
    }
