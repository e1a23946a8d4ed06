"""Measures of a sorting session: completeness, the learning curve's AUC, baselines."""

from __future__ import annotations

import numpy as np


def completeness(current_labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Fraction of images whose current folder is their true category."""
    current_labels, true_labels = np.asarray(current_labels), np.asarray(true_labels)
    if current_labels.shape != true_labels.shape or current_labels.size == 0:
        raise ValueError(
            f"need one current and one true label per image, got shapes "
            f"{current_labels.shape} and {true_labels.shape}"
        )
    return float(np.mean(current_labels == true_labels))


def learning_curve_auc(clicks_fraction: np.ndarray, completeness: np.ndarray) -> float:
    """1 - the area to the left of the learning curve.

    The curve has completeness (y) against clicks / number of images (x); the area to
    its left is ``sum(dy * (x_i + x_{i+1}) / 2)`` (the method note's definition), so a
    curve that reaches 100 % with almost no clicks scores almost 1. The value is
    clipped to [0, 1]: a session that needed more clicks than there are images scores
    0, worse than sorting by hand.

    Parameters
    ----------
    clicks_fraction : ndarray of shape (n_points,)
        Non-decreasing.
    completeness : ndarray of shape (n_points,)
    """
    x = np.asarray(clicks_fraction, dtype=float)
    y = np.asarray(completeness, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"the curve needs matching 1-D x and y, got shapes {x.shape} and {y.shape}"
        )
    if np.any(np.diff(x) < 0):
        raise ValueError("clicks must not decrease along the learning curve")

    area = float(np.sum(np.diff(y) * (x[:-1] + x[1:]) / 2))
    return float(np.clip(1.0 - area, 0.0, 1.0))


def clicks_to_reach(
    clicks: np.ndarray, completeness: np.ndarray, threshold: float
) -> int | None:
    """Clicks at the first curve point with completeness >= threshold, else None."""
    reached = np.flatnonzero(np.asarray(completeness) >= threshold - 1e-12)
    return int(np.asarray(clicks)[reached[0]]) if reached.size else None


def manual_baseline(
    current_labels: np.ndarray, true_labels: np.ndarray, threshold: float
) -> dict:
    """A person corrects misplaced images one click each, no model and no shifts.

    Returns the clicks needed to reach ``threshold`` and the AUC of that straight
    learning curve.
    """
    n_images = len(true_labels)
    start = completeness(current_labels, true_labels)
    misplaced = int(np.sum(np.asarray(current_labels) != np.asarray(true_labels)))
    needed = max(0, int(np.ceil(threshold * n_images - 1e-9)) - (n_images - misplaced))

    clicks = np.arange(needed + 1)
    curve = start + clicks / n_images
    return {
        "name": "manual",
        "clicks": needed,
        "clicks_fraction": needed / n_images,
        "auc": learning_curve_auc(clicks / n_images, curve),
    }


def oracle_baseline(
    current_labels: np.ndarray, true_labels: np.ndarray, threshold: float
) -> dict:
    """The lower bound: one click moves a whole (folder, true label) group.

    Misplaced images are grouped by their current folder and true category; an oracle
    that moves each group in one click, largest group first, needs this many clicks.
    """
    current_labels, true_labels = np.asarray(current_labels), np.asarray(true_labels)
    n_images = len(true_labels)
    misplaced = current_labels != true_labels
    pairs = np.stack([current_labels[misplaced], true_labels[misplaced]], axis=1)
    group_sizes = (
        np.unique(pairs, axis=0, return_counts=True)[1] if len(pairs) else np.array([])
    )
    group_sizes = np.sort(group_sizes)[::-1]

    correct = np.concatenate([[n_images - misplaced.sum()], group_sizes]).cumsum()
    curve = correct / n_images
    clicks = np.arange(len(curve))
    needed = clicks_to_reach(clicks, curve, threshold)
    return {
        "name": "oracle",
        "clicks": needed,
        "clicks_fraction": needed / n_images,
        "auc": learning_curve_auc(clicks / n_images, curve),
    }
