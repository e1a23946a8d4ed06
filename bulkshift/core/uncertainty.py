"""Uncertainty measures over class probabilities, and the order they induce.

Every measure is computed from a probability matrix of shape (n_images, n_labels).
Raw values follow their usual definitions (Settles, "Active Learning Literature
Survey", 2009, section 3.1), so their direction differs: least confidence, entropy and
ratio grow with uncertainty, the margin shrinks. :func:`rank_by_uncertainty` hides that
difference and always returns the most uncertain image first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


class UnknownMeasureError(ValueError):
    """Raised when an uncertainty measure name is not one of :data:`MEASURES`."""


def _two_best(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if probabilities.shape[1] == 1:
        return probabilities[:, 0], np.zeros(len(probabilities))
    top_two = -np.partition(-probabilities, 1, axis=1)[:, :2]
    return top_two[:, 0], top_two[:, 1]


def least_confidence(probabilities: np.ndarray) -> np.ndarray:
    """1 - p(best label); larger is more uncertain. Shape (n_images,)."""
    best, _ = _two_best(probabilities)
    return 1.0 - best


def margin(probabilities: np.ndarray) -> np.ndarray:
    """p(best) - p(second best); smaller is more uncertain. Shape (n_images,)."""
    best, second = _two_best(probabilities)
    return best - second


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """-sum p log p in nats, with 0 log 0 = 0; larger is more uncertain.

    The published code takes log(0) and crashes on a confident classifier; the limit
    p log p -> 0 as p -> 0 is the standard convention.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    return -terms.sum(axis=1)


def ratio(probabilities: np.ndarray) -> np.ndarray:
    """p(second best) / p(best); larger is more uncertain, 1 is a tie.

    An image whose best probability is 0 (no information at all) counts as a tie.
    """
    best, second = _two_best(probabilities)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(best > 0, second / np.where(best > 0, best, 1.0), 1.0)
    return values


@dataclass(frozen=True)
class UncertaintyMeasure:
    """A named measure, its direction, and its bounds for a score in [0, 1].

    Attributes
    ----------
    name : str
    compute : callable
        Maps probabilities (n_images, n_labels) to raw values (n_images,).
    larger_is_more_uncertain : bool
    """

    name: str
    compute: Callable[[np.ndarray], np.ndarray]
    larger_is_more_uncertain: bool


MEASURES: dict[str, UncertaintyMeasure] = {
    measure.name: measure
    for measure in (
        UncertaintyMeasure("least_confidence", least_confidence, True),
        UncertaintyMeasure("margin", margin, False),
        UncertaintyMeasure("entropy", entropy, True),
        UncertaintyMeasure("ratio", ratio, True),
    )
}


def get_measure(name: str) -> UncertaintyMeasure:
    """Return the measure called ``name``, or explain which names exist."""
    try:
        return MEASURES[name]
    except KeyError:
        known = ", ".join(MEASURES)
        raise UnknownMeasureError(
            f"unknown uncertainty measure {name!r}; choose one of: {known}"
        ) from None


def _validated(probabilities: np.ndarray) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or probabilities.shape[1] == 0:
        raise ValueError(
            "probabilities must be a 2-D array with one column per label, got shape "
            f"{probabilities.shape}"
        )
    return probabilities


def uncertainty(probabilities: np.ndarray, measure: str) -> np.ndarray:
    """Uncertainty of every image, oriented so that larger is more uncertain.

    Parameters
    ----------
    probabilities : ndarray of shape (n_images, n_labels)
    measure : str
        One of :data:`MEASURES`.

    Returns
    -------
    ndarray of shape (n_images,)
        The raw value for least confidence, entropy and ratio; minus the margin.
    """
    spec = get_measure(measure)
    values = spec.compute(_validated(probabilities))
    return values if spec.larger_is_more_uncertain else -values


def rank_by_uncertainty(
    probabilities: np.ndarray, measure: str, candidates: np.ndarray | None = None
) -> np.ndarray:
    """Image indices ordered most uncertain first, ties by index.

    Parameters
    ----------
    probabilities : ndarray of shape (n_images, n_labels)
    measure : str
    candidates : ndarray of int or bool, optional
        Restrict the ranking to these images (indices, or a mask of length n_images).

    Returns
    -------
    ndarray of int
        Indices into the full image set.
    """
    values = uncertainty(probabilities, measure)
    if candidates is None:
        indices = np.arange(len(values))
    else:
        candidates = np.asarray(candidates)
        indices = np.flatnonzero(candidates) if candidates.dtype == bool else candidates
    order = np.argsort(-values[indices], kind="stable")
    return indices[order]


def certainty_score(probabilities: np.ndarray, measure: str) -> np.ndarray:
    """A score in [0, 1] per image, higher = more certain, ordered like the measure.

    This is the ``score`` of a Label Studio prediction: sorting the Data Manager by
    prediction score ascending then lists the most uncertain task first, the same
    order as :func:`rank_by_uncertainty`.

    least confidence -> p(best); margin -> p(best) - p(second);
    entropy -> 1 - H / log(n_labels); ratio -> 1 - p(second) / p(best).
    """
    probabilities = _validated(probabilities)
    n_labels = probabilities.shape[1]
    raw = get_measure(measure).compute(probabilities)

    if measure == "least_confidence":
        score = 1.0 - raw
    elif measure == "margin":
        score = raw
    elif measure == "entropy":
        score = 1.0 - raw / np.log(n_labels) if n_labels > 1 else np.ones_like(raw)
    else:
        score = 1.0 - raw
    return np.clip(score, 0.0, 1.0)
