"""The pre-sort: k-means folders over image features, before any click."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

MAX_DEFAULT_CLUSTERS = 30


def default_n_clusters(n_images: int) -> int:
    """A number of folders a person can name in one sitting: ``sqrt(n) / 2``.

    Clamped to [2, 30]: 30 images give 3 folders, 3,000 give 27, and no project asks
    for more than 30 names. Fewer images than folders give one folder per image.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    suggested = int(round(np.sqrt(n_images) / 2))
    return int(min(n_images, max(2, min(MAX_DEFAULT_CLUSTERS, suggested))))


@dataclass(frozen=True)
class Presort:
    """k-means folders.

    Attributes
    ----------
    assignments : ndarray of int of shape (n_images,)
        Folder (cluster) index of every image.
    distances : ndarray of shape (n_images,)
        Euclidean distance of every image to its folder's centre.
    n_clusters : int
    """

    assignments: np.ndarray
    distances: np.ndarray
    n_clusters: int

    def members_nearest_first(self, cluster: int) -> np.ndarray:
        """Indices of the images in ``cluster``, nearest its centre first."""
        members = np.flatnonzero(self.assignments == cluster)
        return members[np.argsort(self.distances[members], kind="stable")]


def presort(features: np.ndarray, n_clusters: int, random_state: int = 0) -> Presort:
    """Cluster ``features`` (n_images, n_features) into ``n_clusters`` folders."""
    features = np.asarray(features, dtype=float)
    n_images = len(features)
    if not 1 <= n_clusters <= n_images:
        raise ValueError(
            f"n_clusters={n_clusters} must be between 1 and the number of images "
            f"({n_images})"
        )

    kmeans = KMeans(n_clusters=n_clusters, n_init=3, random_state=random_state)
    assignments = kmeans.fit_predict(features)
    centres = kmeans.cluster_centers_[assignments]
    distances = np.linalg.norm(features - centres, axis=1)
    return Presort(assignments=assignments, distances=distances, n_clusters=n_clusters)


def name_by_majority(
    assignments: np.ndarray, true_labels: np.ndarray, n_clusters: int
) -> np.ndarray:
    """The simulation's oracle naming: each folder takes its most frequent true label.

    Ties go to the lower label index. An empty folder keeps label 0; it has no image
    for the name to matter.

    Returns
    -------
    ndarray of int of shape (n_clusters,)
    """
    n_labels = int(np.max(true_labels)) + 1
    counts = np.zeros((n_clusters, n_labels), dtype=int)
    np.add.at(counts, (assignments, true_labels), 1)
    return counts.argmax(axis=1)
