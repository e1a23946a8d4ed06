"""The bulk-shift rule: which other images follow a person's move.

When a person moves one image (the *seed*) from its source label A to a destination
label B, and B was the seed's r-th recommended label, a bulk shift proposes to move
every other image whose r-th recommendation is also B. Which "other images" are
eligible is what distinguishes the named rules below; the rank condition is common to
all of them.

This module does no I/O: the Label Studio service, the relabeling CLI and the
simulated annotator all call :func:`propose_bulk_shift`, so the benchmark measures the
rule a person gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Scope = Literal["round", "pool"]


class UnknownStrategyError(ValueError):
    """Raised when a strategy name is not one of :data:`STRATEGIES`."""


@dataclass(frozen=True)
class ShiftRule:
    """Which images a bulk-shift proposal may contain, and in which order.

    Parameters
    ----------
    name : str
        The name the benchmark and the services report.
    scope : {"round", "pool"}
        ``"round"``: candidates only among the images shown in the current round (the
        published simulation). ``"pool"``: candidates among every image.
    same_source : bool
        Require candidates to be currently labeled with the seed's source label A (the
        condition the paper's interface applies and its simulation drops).
    protect_confirmed : bool
        Never propose an image whose current label a person confirmed.
    skip_destination : bool
        Leave out images already labeled B (moving them changes nothing). The published
        simulation keeps them and counts a click for each.
    order_by_confidence : bool
        Order members by the probability of B, most confident first; otherwise by
        image index.
    review : {"accept_all", "untick", "prefix"}
        How the simulated person treats a proposal: ``"accept_all"`` accepts it and then
        corrects each member that did not belong (the paper's simulation);
        ``"untick"`` unticks each member that does not belong and accepts if that
        still fixes at least as many images as it costs clicks, else leaves the
        proposal alone; ``"prefix"`` accepts the most confident members "up to here"
        (the review page's cut-off button), unticking the strays above the cut-off.
    retrain_between_shifts : bool
        Simulation only: retrain the classifier after every accepted shift instead of
        once per round.
    out_of_fold : int
        How the classifier predicts the pool: 0 in-sample (the paper), k >= 2 with
        k-fold out-of-fold models (see
        :func:`bulkshift.core.classifiers.pool_probabilities`).
    confirmed_weight : float
        Training weight of a person-confirmed label relative to a machine label.
    stop_check : {"round", "event"}
        Simulation only: when the person checks whether the folders are good enough,
        at the end of a round (the published code) or after every move (a person who
        stops as soon as the threshold is reached).
    description : str
        One line for ``--help`` and the README.
    """

    name: str
    scope: Scope
    same_source: bool
    protect_confirmed: bool
    skip_destination: bool
    order_by_confidence: bool
    review: Literal["accept_all", "untick", "prefix"] = "accept_all"
    retrain_between_shifts: bool = False
    out_of_fold: int = 0
    confirmed_weight: float = 1.0
    stop_check: Literal["round", "event"] = "round"
    description: str = field(default="", compare=False)


STRATEGIES: dict[str, ShiftRule] = {
    rule.name: rule
    for rule in (
        ShiftRule(
            name="paper",
            scope="round",
            same_source=False,
            protect_confirmed=False,
            skip_destination=False,
            order_by_confidence=False,
            review="accept_all",
            description="the published simulation: candidates among the round's "
            "images, any source folder, accept then correct",
        ),
        ShiftRule(
            name="paper-ui",
            scope="round",
            same_source=True,
            protect_confirmed=False,
            skip_destination=False,
            order_by_confidence=False,
            review="accept_all",
            description="the published interface: as 'paper' plus the same-source-"
            "folder condition",
        ),
        ShiftRule(
            name="guarded-pool",
            scope="pool",
            same_source=True,
            protect_confirmed=True,
            skip_destination=True,
            order_by_confidence=True,
            review="prefix",
            confirmed_weight=5.0,
            stop_check="event",
            description="ours: candidates in the whole pool, same source folder, never "
            "a person-confirmed image, most confident first, accepted up to a "
            "cut-off, confirmed labels weigh 5x in training",
        ),
        # An ablation, not a product setting: the published interface's candidates
        # with our review and stopping, to show what the pool search and the
        # protection of confirmed labels add on their own.
        ShiftRule(
            name="paper-ui-reviewed",
            scope="round",
            same_source=True,
            protect_confirmed=False,
            skip_destination=False,
            order_by_confidence=False,
            review="untick",
            stop_check="event",
            description="ablation: 'paper-ui' candidates with guarded-pool's review "
            "(strays unticked, unhelpful proposals left alone) and stopping",
        ),
    )
}


def get_strategy(name: str) -> ShiftRule:
    """Return the rule called ``name``, or explain which names exist."""
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise UnknownStrategyError(
            f"unknown bulk-shift strategy {name!r}; choose one of: {known}"
        ) from None


@dataclass(frozen=True)
class Proposal:
    """A proposed bulk shift of ``members`` from ``source`` to ``destination``.

    Attributes
    ----------
    seed : int
        Index of the image the person moved.
    source, destination : int
        Label indices A and B of the person's move.
    rank : int
        Zero-based position of B in the seed's recommended labels (the paper's r - 1).
    members : ndarray of shape (n_members,)
        Indices of the proposed images, in display order.
    confidence : ndarray of shape (n_members,)
        Probability of B for each member, or NaN where no probabilities were given.
    """

    seed: int
    source: int
    destination: int
    rank: int
    members: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.members)


def seed_rank(recommendations: np.ndarray, seed: int, destination: int) -> int | None:
    """Zero-based rank of ``destination`` among the seed's recommended labels.

    Returns None when ``destination`` is not among them: the rule then has no rank to
    match and proposes nothing.
    """
    positions = np.flatnonzero(recommendations[seed] == destination)
    return int(positions[0]) if positions.size else None


def propose_bulk_shift(
    seed: int,
    source: int,
    destination: int,
    current_labels: np.ndarray,
    recommendations: np.ndarray,
    rule: ShiftRule,
    *,
    round_members: np.ndarray | None = None,
    confirmed: np.ndarray | None = None,
    recommendation_probabilities: np.ndarray | None = None,
) -> Proposal | None:
    """Propose the images that follow the seed's move from A to B.

    Parameters
    ----------
    seed : int
        Index of the image the person moved.
    source, destination : int
        Label indices of the move A -> B. ``source`` is the seed's label *before* the
        move; ``current_labels[seed]`` may already hold ``destination``.
    current_labels : ndarray of shape (n_images,)
        Current label index of every image.
    recommendations : ndarray of shape (n_images, n_recommendations)
        Recommended label indices per image, best first (see
        :func:`bulkshift.core.ranking.recommended_labels`).
    rule : ShiftRule
        Which images are eligible and in which order.
    round_members : ndarray of int, optional
        Indices shown in the current round; required when ``rule.scope == "round"``.
    confirmed : ndarray of bool of shape (n_images,), optional
        True where a person confirmed the current label. Missing means none.
    recommendation_probabilities : ndarray of shape (n_images, n_recommended), optional
        Probability of each recommended label; used for the confidence order.

    Returns
    -------
    Proposal or None
        None when the move is not a change, B is not among the seed's recommendations,
        or no image is eligible.
    """
    n_images = len(current_labels)
    if not 0 <= seed < n_images:
        raise IndexError(f"seed index {seed} is outside 0..{n_images - 1}")
    if recommendations.shape[0] != n_images:
        raise ValueError(
            f"recommendations have {recommendations.shape[0]} rows but there are "
            f"{n_images} images; pass one row per image"
        )
    if rule.scope == "round" and round_members is None:
        raise ValueError(
            f"strategy {rule.name!r} searches the current round only; pass "
            "round_members"
        )
    if source == destination:
        return None

    rank = seed_rank(recommendations, seed, destination)
    if rank is None:
        return None

    eligible = recommendations[:, rank] == destination
    eligible[seed] = False
    if rule.scope == "round":
        in_round = np.zeros(n_images, dtype=bool)
        in_round[np.asarray(round_members, dtype=int)] = True
        eligible &= in_round
    if rule.same_source:
        eligible &= current_labels == source
    if rule.skip_destination:
        eligible &= current_labels != destination
    if rule.protect_confirmed and confirmed is not None:
        eligible &= ~np.asarray(confirmed, dtype=bool)

    members = np.flatnonzero(eligible)
    if members.size == 0:
        return None

    if recommendation_probabilities is None:
        confidence = np.full(members.size, np.nan)
    else:
        confidence = np.asarray(recommendation_probabilities)[members, rank].astype(
            float
        )
    if rule.order_by_confidence and recommendation_probabilities is not None:
        # A stable sort keeps index order among equal confidences, so the display
        # order is reproducible.
        order = np.argsort(-confidence, kind="stable")
        members, confidence = members[order], confidence[order]

    return Proposal(
        seed=seed,
        source=source,
        destination=destination,
        rank=rank,
        members=members,
        confidence=confidence,
    )
