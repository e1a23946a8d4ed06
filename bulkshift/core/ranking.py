"""Recommended labels: the most probable labels of each image, best first."""

from __future__ import annotations

import numpy as np

N_RECOMMENDATIONS = 10


def recommended_labels(
    probabilities: np.ndarray, n_recommendations: int = N_RECOMMENDATIONS
) -> np.ndarray:
    """Label indices of the ``n_recommendations`` most probable labels per image.

    Ties are broken by label index, lower first, so two runs on the same
    probabilities always recommend the same labels in the same order. (The published
    code repeats a label when probabilities tie; this never does.)

    Parameters
    ----------
    probabilities : ndarray of shape (n_images, n_labels)
    n_recommendations : int, default=10
        Capped at ``n_labels``.

    Returns
    -------
    ndarray of int of shape (n_images, min(n_recommendations, n_labels))
    """
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2:
        raise ValueError(
            f"probabilities must be a 2-D array (images x labels), got shape "
            f"{probabilities.shape}"
        )
    if n_recommendations < 1:
        raise ValueError(
            f"n_recommendations must be at least 1, got {n_recommendations}"
        )

    n_kept = min(n_recommendations, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return order[:, :n_kept]


def recommendation_probabilities(
    probabilities: np.ndarray, recommendations: np.ndarray
) -> np.ndarray:
    """Probability of each recommended label, shape of ``recommendations``."""
    return np.take_along_axis(
        np.asarray(probabilities, dtype=float), recommendations, 1
    )
