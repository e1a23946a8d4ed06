"""One refresh of a project's model: the folders before labels, the classifier after.

Pure computation over arrays and plain dicts; the job in :mod:`ml_backend.jobs` does
the reading and writing around it. The method itself comes from ``bulkshift.core``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bulkshift.core.classifiers import (
    confirmed_weights,
    make_label_model,
    pool_probabilities,
)
from bulkshift.core.presort import default_n_clusters, presort
from bulkshift.core.proposals import STRATEGIES
from bulkshift.core.ranking import recommendation_probabilities, recommended_labels
from bulkshift.core.uncertainty import certainty_score
from ml_backend.protocol import folder_name


@dataclass(frozen=True)
class Folders:
    """The k-means folders of a project.

    Attributes
    ----------
    clusters : list of dict
        ``{"cluster": i, "name": "Cluster 01", "tasks": [task ids nearest the centre
        first]}`` per folder (the ``bulkshift:project:P:clusters`` format).
    label_of : dict of int to str
        Folder name of every task.
    closeness : dict of int to float
        1 at the folder's centre, 0 at its farthest member: the pre-annotation score.
    """

    clusters: list[dict]
    label_of: dict[int, str]
    closeness: dict[int, float]


def sort_into_folders(
    task_ids: list[int],
    features: np.ndarray,
    n_clusters: int | None,
    random_state: int = 0,
) -> Folders:
    """k-means folders of the tasks; ``n_clusters`` None means the core's default."""
    n_tasks = len(task_ids)
    k = default_n_clusters(n_tasks) if n_clusters is None else min(n_clusters, n_tasks)
    sorted_ = presort(features, k, random_state=random_state)

    clusters, label_of, closeness = [], {}, {}
    for cluster in range(k):
        members = sorted_.members_nearest_first(cluster)
        name = folder_name(cluster, k)
        farthest = float(sorted_.distances[members].max()) if len(members) else 0.0
        for row in members:
            task = int(task_ids[row])
            label_of[task] = name
            closeness[task] = (
                1.0 - float(sorted_.distances[row]) / farthest if farthest > 0 else 1.0
            )
        clusters.append(
            {
                "cluster": cluster,
                "name": name,
                "tasks": [int(task_ids[r]) for r in members],
            }
        )
    return Folders(clusters, label_of, closeness)


def folder_of(clusters: list[dict] | None) -> dict[int, str]:
    """Task id -> folder name, from a stored ``clusters`` value."""
    return {
        int(task): cluster["name"]
        for cluster in clusters or []
        for task in cluster["tasks"]
    }


def current_labels(
    task_ids: Iterable[int],
    annotated: dict[int, str],
    service: dict[int, str],
    folders: dict[int, str],
) -> dict[int, str]:
    """Each task's current label: its annotation, else the service's, else its folder.

    A task with none of the three is left out (it has no label to train on).
    """
    labels = {}
    for task in task_ids:
        label = annotated.get(task) or service.get(task) or folders.get(task)
        if label:
            labels[task] = label
    return labels


def label_names(
    known: list[str], configured: list[str], used: Iterable[str]
) -> list[str]:
    """The label set: the labeling config's options and any other name in use.

    Stored names keep their order (the service maps names to indices with it), then
    come the config's new options, then other names in use, first seen first. A
    stored name that is neither in the config nor in use is dropped: after naming,
    the folders' "Cluster NN" names are no label any more.
    """
    used = list(used)
    wanted = set(configured) | set(used)
    names = [name for name in dict.fromkeys(known) if name in wanted]
    for name in list(configured) + used:
        if name not in names:
            names.append(name)
    return names


def person_confirmed(
    task_ids: Iterable[int],
    annotated: dict[int, str],
    people: set[int],
    service_tracks_tasks: bool,
) -> np.ndarray:
    """True for each task whose current label a person set.

    When the bulk-shift service tracks the project, only its word counts: a task it
    saw a person label (origin "person"). Its own writes (naming, shifts) are
    annotations too, but the machine's. Without a service (it tracks no task of the
    project), every annotation is taken as a person's.
    """
    if service_tracks_tasks:
        return np.array([task in people for task in task_ids], dtype=bool)
    return np.array([task in annotated for task in task_ids], dtype=bool)


@dataclass(frozen=True)
class LabelInputs:
    """What the classifier learns from.

    Attributes
    ----------
    names : list of str
        The label set; an index into it is a label.
    labels : ndarray of int
        Current label index of each task (-1: none).
    confirmed : ndarray of bool
        Whether a person set it.
    used : list of str
        The names some task currently has.
    """

    names: list[str]
    labels: np.ndarray
    confirmed: np.ndarray
    used: list[str]


@dataclass(frozen=True)
class Ranking:
    """Classifier output for every task.

    Attributes
    ----------
    probabilities : ndarray of shape (n_tasks, n_labels)
    scores : ndarray of shape (n_tasks,)
        Certainty in [0, 1], higher = more certain (the prediction score).
    recommended : ndarray of int of shape (n_tasks, n_recommended)
        Label indices, best first.
    recommended_probabilities : ndarray of shape (n_tasks, n_recommended)
    """

    probabilities: np.ndarray
    scores: np.ndarray
    recommended: np.ndarray
    recommended_probabilities: np.ndarray


def train_and_rank(
    features: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    classifier: str,
    measure: str,
    random_state: int = 0,
    n_recommendations: int = 10,
    confirmed: np.ndarray | None = None,
    strategy: str = "guarded-pool",
) -> Ranking:
    """Train ``classifier`` on the tasks' current labels and score every task.

    Training follows ``strategy``'s plan (its weight for person-confirmed labels and
    its in-sample or out-of-fold predictions), the same call the simulated annotator
    makes, so the benchmark's figures describe what the backend does.

    Parameters
    ----------
    features : ndarray of shape (n_tasks, n_features)
    labels : ndarray of int of shape (n_tasks,)
        Current label index of every task, -1 for a task without one (it is scored
        but not trained on).
    n_labels : int
    classifier, measure : str
        Names from ``bulkshift.core.classifiers.CLASSIFIERS`` and
        ``bulkshift.core.uncertainty.MEASURES``.
    confirmed : ndarray of bool of shape (n_tasks,), optional
        True where a person set the current label.
    strategy : str
        A name from ``bulkshift.core.proposals.STRATEGIES``.
    """
    labels = np.asarray(labels, dtype=int)
    labeled = labels >= 0
    rule = STRATEGIES[strategy]
    confirmed_labeled = (
        None if confirmed is None else np.asarray(confirmed, dtype=bool)[labeled]
    )

    probabilities = np.empty((len(labels), n_labels))
    probabilities[labeled] = pool_probabilities(
        features[labeled],
        labels[labeled],
        n_labels,
        classifier,
        confirmed=confirmed_labeled,
        confirmed_weight=rule.confirmed_weight,
        out_of_fold=rule.out_of_fold,
        random_state=random_state,
    )
    if not labeled.all():
        # A task without any label is outside the pool the model learns from; a
        # model trained on every labeled task scores it.
        model = make_label_model(classifier, n_labels, random_state=random_state)
        model.fit(
            features[labeled],
            labels[labeled],
            confirmed_weights(confirmed_labeled, rule.confirmed_weight),
        )
        probabilities[~labeled] = model.predict_proba(features[~labeled])
    recommended = recommended_labels(probabilities, n_recommendations)
    return Ranking(
        probabilities=probabilities,
        scores=certainty_score(probabilities, measure),
        recommended=recommended,
        recommended_probabilities=recommendation_probabilities(
            probabilities, recommended
        ),
    )
