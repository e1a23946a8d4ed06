"""The service's proposal rule ("guarded-pool") against a naive per-image reference.

The service never re-implements the rule: it calls
:func:`bulkshift.core.proposals.propose_bulk_shift` with ``STRATEGIES["guarded-pool"]``.
These tests pin what a person gets from it, image by image, in plain Python.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkshift.core.proposals import STRATEGIES, propose_bulk_shift

RULE = STRATEGIES["guarded-pool"]


def naive_proposal(
    seed, source, destination, labels, recommendations, confirmed, probabilities
):
    """The rule written out one image at a time (no numpy)."""
    if source == destination:
        return None
    seed_row = list(recommendations[seed])
    if destination not in seed_row:
        return None
    rank = seed_row.index(destination)
    chosen = []
    for image in range(len(labels)):
        if image == seed:
            continue
        if recommendations[image][rank] != destination:
            continue
        if labels[image] != source:  # same source folder
            continue
        if labels[image] == destination:  # nothing to move
            continue
        if confirmed[image]:  # a person's label is never moved
            continue
        chosen.append(image)
    # Most confident first; equal confidence keeps image order.
    chosen.sort(key=lambda image: (-probabilities[image][rank], image))
    if not chosen:
        return None
    return rank, chosen


@st.composite
def projects(draw):
    n_labels = draw(st.integers(2, 5))
    n_images = draw(st.integers(1, 30))
    n_recommendations = draw(st.integers(1, n_labels))
    recommendations = [
        draw(st.permutations(range(n_labels)))[:n_recommendations]
        for _ in range(n_images)
    ]
    # Few distinct probabilities, so ties (and their order) get exercised.
    probabilities = [
        [draw(st.sampled_from([0.1, 0.25, 0.5, 0.9])) for _ in range(n_recommendations)]
        for _ in range(n_images)
    ]
    labels = [draw(st.integers(0, n_labels - 1)) for _ in range(n_images)]
    confirmed = [draw(st.booleans()) for _ in range(n_images)]
    seed = draw(st.integers(0, n_images - 1))
    source = labels[seed]
    destination = draw(st.integers(0, n_labels - 1))
    return seed, source, destination, labels, recommendations, confirmed, probabilities


@settings(max_examples=400, deadline=None)
@given(projects())
def test_matches_naive_reference(project):
    seed, source, destination, labels, recommendations, confirmed, probabilities = (
        project
    )

    proposal = propose_bulk_shift(
        seed,
        source,
        destination,
        np.array(labels),
        np.array(recommendations),
        RULE,
        confirmed=np.array(confirmed),
        recommendation_probabilities=np.array(probabilities),
    )
    expected = naive_proposal(
        seed, source, destination, labels, recommendations, confirmed, probabilities
    )

    if expected is None:
        assert proposal is None
    else:
        rank, members = expected
        assert proposal.rank == rank
        assert proposal.members.tolist() == members
        assert proposal.confidence.tolist() == [probabilities[m][rank] for m in members]


def test_hand_worked_project():
    """The eight-task project of tests/integration/test_plugin_service.py.

    Labels A=0, B=1, C=2; the person moves t0 from A to B, B being t0's second
    recommendation. t1 (0.30) and t2 (0.40) follow, t2 first; t3 and t6 have B at
    another rank, t4 is in C, t5 is confirmed, t7 is already B.
    """
    labels = np.array([0, 0, 0, 0, 2, 0, 0, 1])
    recommendations = np.array(
        [
            [0, 1, 2],
            [0, 1, 2],
            [0, 1, 2],
            [1, 0, 2],
            [0, 1, 2],
            [0, 1, 2],
            [0, 2, 1],
            [0, 1, 2],
        ]
    )
    probabilities = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.6, 0.3, 0.1],
            [0.5, 0.4, 0.1],
            [0.6, 0.3, 0.1],
            [0.6, 0.3, 0.1],
            [0.55, 0.35, 0.1],
            [0.6, 0.3, 0.1],
            [0.6, 0.3, 0.1],
        ]
    )
    confirmed = np.array([True, False, False, False, False, True, False, False])

    proposal = propose_bulk_shift(
        0,
        0,
        1,
        labels,
        recommendations,
        RULE,
        confirmed=confirmed,
        recommendation_probabilities=probabilities,
    )

    assert proposal.rank == 1
    assert proposal.members.tolist() == [2, 1]
    assert all(math.isclose(a, b) for a, b in zip(proposal.confidence, [0.4, 0.3]))
