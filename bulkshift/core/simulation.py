"""The simulated annotator: a person sorting images with bulk-shift proposals.

The person knows every image's true category (an oracle) and follows the method note:

1. k-means folders, each named after its majority true category (no click);
2. rounds: the classifier is trained on every image's current folder, the person is
   shown the ``batch_size`` most uncertain images not yet seen, and moves each
   misplaced one to its true folder (one click);
3. after each move the bulk-shift rule proposes other images; the person resolves the
   proposal as the strategy's ``review`` says (see :class:`ShiftRule`);
4. until completeness reaches the threshold or no unseen image is left.

Clicks: one per image moved by the person, one per accepted or rejected proposal, one
per proposed image that did not belong (corrected after accepting, or unticked before).
An image the person sees in its right folder costs no click unless
``count_confirmations`` is set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from bulkshift.core.classifiers import pool_probabilities
from bulkshift.core.measures import learning_curve_auc
from bulkshift.core.presort import name_by_majority, presort
from bulkshift.core.proposals import ShiftRule, get_strategy, propose_bulk_shift
from bulkshift.core.ranking import (
    N_RECOMMENDATIONS,
    recommendation_probabilities,
    recommended_labels,
)
from bulkshift.core.uncertainty import get_measure, rank_by_uncertainty

StopCheck = Literal["round", "event"]


@dataclass
class SimulationResult:
    """What one simulated session did and cost.

    Attributes
    ----------
    clicks, completeness : ndarray of shape (n_points,)
        The learning curve: cumulative clicks and completeness after each event (a
        move, a resolved proposal). The first point is the pre-sort (0 clicks).
    proposals : list of dict
        One per proposal shown: ``seed``, ``source``, ``destination``, ``rank``,
        ``size``, ``purity``, ``accepted``.
    """

    classifier: str
    uncertainty: str
    strategy: str
    n_images: int
    n_labels: int
    seed: int
    threshold: float
    stop_check: StopCheck
    initial_completeness: float
    clicks: np.ndarray
    completeness: np.ndarray
    rounds: int
    proposals: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_clicks(self) -> int:
        return int(self.clicks[-1])

    @property
    def clicks_fraction(self) -> float:
        return self.total_clicks / self.n_images

    @property
    def final_completeness(self) -> float:
        return float(self.completeness[-1])

    @property
    def auc(self) -> float:
        return learning_curve_auc(self.clicks / self.n_images, self.completeness)

    @property
    def proposals_accepted(self) -> int:
        return sum(1 for proposal in self.proposals if proposal["accepted"])

    @property
    def mean_purity(self) -> float | None:
        purities = [proposal["purity"] for proposal in self.proposals]
        return float(np.mean(purities)) if purities else None

    def summary(self) -> dict:
        """The benchmark's JSON record for this run."""
        return {
            "classifier": self.classifier,
            "uncertainty": self.uncertainty,
            "strategy": self.strategy,
            "stop_check": self.stop_check,
            "auc": round(self.auc, 4),
            "clicks": self.total_clicks,
            "clicks_fraction": round(self.clicks_fraction, 4),
            "rounds": self.rounds,
            "proposals_shown": len(self.proposals),
            "proposals_accepted": self.proposals_accepted,
            "mean_purity": (
                None if self.mean_purity is None else round(self.mean_purity, 4)
            ),
            "initial_completeness": round(self.initial_completeness, 4),
            "final_completeness": round(self.final_completeness, 4),
            "seconds": round(self.seconds, 3),
        }


class _Session:
    """Mutable state of one simulated person: folders, clicks and the curve."""

    def __init__(self, current: np.ndarray, true_labels: np.ndarray):
        self.current = current
        self.true = true_labels
        self.n_images = len(true_labels)
        self.n_correct = int(np.sum(current == true_labels))
        self.seen = np.zeros(self.n_images, dtype=bool)
        self.confirmed = np.zeros(self.n_images, dtype=bool)
        self.total_clicks = 0
        self.curve_clicks = [0]
        self.curve_completeness = [self.completeness]

    @property
    def completeness(self) -> float:
        return self.n_correct / self.n_images

    def move(self, image: int, label: int) -> None:
        was_correct = self.current[image] == self.true[image]
        self.current[image] = label
        self.n_correct += int(label == self.true[image]) - int(was_correct)

    def click(self, count: int = 1) -> None:
        self.total_clicks += count

    def record(self) -> None:
        self.curve_clicks.append(self.total_clicks)
        self.curve_completeness.append(self.completeness)


def _resolve_proposal(session: _Session, proposal, rule: ShiftRule) -> dict:
    """Let the simulated person accept, correct, untick or reject a proposal."""
    members, destination = proposal.members, proposal.destination
    belongs = session.true[members] == destination
    record = {
        "seed": int(proposal.seed),
        "source": int(proposal.source),
        "destination": int(destination),
        "rank": int(proposal.rank),
        "size": int(len(members)),
        "purity": float(belongs.mean()),
    }

    if rule.review == "accept_all":
        # The published simulation: accept (one click), then move every member that
        # did not belong to its true folder (one click each).
        session.click()
        for image in members:
            session.move(image, destination)
        for image in members[~belongs]:
            session.move(image, session.true[image])
            session.seen[image] = session.confirmed[image] = True
            session.click()
        record["accepted"] = True
        return record

    if rule.review == "prefix":
        return _resolve_by_prefix(session, members, belongs, destination, record)

    # Untick review: a person accepts when the images that come right are at least the
    # clicks it costs (one accept, one untick per stray); otherwise the proposal is
    # left alone, which the method's click count does not charge.
    n_wrong = int((~belongs).sum())
    if belongs.sum() >= 1 + n_wrong:
        session.click(1 + n_wrong)
        for image in members[belongs]:
            session.move(image, destination)
        record["accepted"] = True
    else:
        record["accepted"] = False
    return record


def _resolve_by_prefix(session, members, belongs, destination, record) -> dict:
    """Accept the most confident members up to a cut-off the person picks.

    Members are shown most confident first; the person accepts "up to here" (one
    click) where that fixes the most images net of the strays above the cut-off,
    which they untick (one click each). No cut-off worth a click: left alone.
    """
    net_gain = np.cumsum(np.where(belongs, 1, -1)) - 1
    best = int(np.argmax(net_gain))
    if net_gain[best] < 0:
        record["accepted"] = False
        return record

    accepted = members[: best + 1]
    good = belongs[: best + 1]
    session.click(1 + int((~good).sum()))
    for image in accepted[good]:
        session.move(image, destination)
    record["accepted"] = True
    record["accepted_size"] = int(good.sum())
    return record


def simulate(
    features: np.ndarray,
    true_labels: np.ndarray,
    *,
    classifier: str = "lr",
    uncertainty: str = "entropy",
    strategy: str | ShiftRule = "paper",
    threshold: float = 0.99,
    batch_size: int = 250,
    n_clusters: int | None = None,
    n_recommendations: int = N_RECOMMENDATIONS,
    stop_check: StopCheck | None = None,
    count_confirmations: bool = False,
    initial_labels: np.ndarray | None = None,
    random_state: int = 0,
    on_round: Callable[[int, float, int], None] | None = None,
) -> SimulationResult:
    """Simulate one person sorting ``features`` into ``true_labels``.

    Parameters
    ----------
    features : ndarray of shape (n_images, n_features)
    true_labels : ndarray of int of shape (n_images,)
        True category index per image, ``0 .. n_labels - 1``.
    classifier, uncertainty : str
        Names from :data:`~bulkshift.core.classifiers.CLASSIFIERS` and
        :data:`~bulkshift.core.uncertainty.MEASURES`.
    strategy : str or ShiftRule
        A name from :data:`~bulkshift.core.proposals.STRATEGIES`, or a rule.
    threshold : float, default=0.99
        Stop once completeness reaches it (the published code: 0.99; its text: 0.999).
    batch_size : int, default=250
        Images shown per round.
    n_clusters : int, optional
        k-means folders; default one per true category, as in the paper.
    stop_check : {"round", "event"}, optional
        When the threshold is checked: at the end of each round (the published code)
        or after every event. Default: the strategy's ``stop_check``.
    count_confirmations : bool, default=False
        Charge one click per seen image that was already in its right folder.
    initial_labels : ndarray of int, optional
        Start from these folders instead of the named k-means pre-sort.
    random_state : int, default=0
        Seeds k-means and the classifier; a run is reproducible from it.
    on_round : callable, optional
        Called as ``on_round(round_number, completeness, clicks)`` after each round.

    Returns
    -------
    SimulationResult
    """
    started = time.perf_counter()
    features = np.asarray(features, dtype=np.float32)
    true_labels = np.asarray(true_labels, dtype=int)
    _check_inputs(features, true_labels, threshold, batch_size)
    rule = get_strategy(strategy) if isinstance(strategy, str) else strategy
    get_measure(uncertainty)
    stop_check = stop_check or rule.stop_check
    n_images, n_labels = len(true_labels), int(true_labels.max()) + 1

    if initial_labels is None:
        n_clusters = n_labels if n_clusters is None else n_clusters
        folders = presort(features, n_clusters, random_state=random_state)
        names = name_by_majority(folders.assignments, true_labels, n_clusters)
        initial_labels = names[folders.assignments]
    session = _Session(np.array(initial_labels, dtype=int), true_labels)
    initial = session.completeness

    def predict_pool() -> np.ndarray:
        return pool_probabilities(
            features,
            session.current,
            n_labels,
            classifier,
            confirmed=session.confirmed,
            confirmed_weight=rule.confirmed_weight,
            out_of_fold=rule.out_of_fold,
            random_state=random_state,
        )

    proposals: list[dict] = []
    rounds = 0
    done = session.completeness >= threshold

    while not done and not session.seen.all():
        rounds += 1
        probabilities = predict_pool()
        recommendations = recommended_labels(probabilities, n_recommendations)
        recommended_probs = recommendation_probabilities(probabilities, recommendations)
        batch = rank_by_uncertainty(probabilities, uncertainty, ~session.seen)
        batch = batch[:batch_size]

        for seed in batch:
            if session.seen[seed]:
                continue
            session.seen[seed] = session.confirmed[seed] = True
            source, destination = session.current[seed], session.true[seed]
            if source == destination:
                if count_confirmations:
                    session.click()
                    session.record()
                continue

            session.move(seed, destination)
            session.click()
            session.record()

            proposal = propose_bulk_shift(
                seed,
                source,
                destination,
                session.current,
                recommendations,
                rule,
                round_members=batch,
                confirmed=session.confirmed,
                recommendation_probabilities=recommended_probs,
            )
            if proposal is not None:
                proposals.append(_resolve_proposal(session, proposal, rule))
                session.record()
                if rule.retrain_between_shifts and proposals[-1]["accepted"]:
                    probabilities = predict_pool()
                    recommendations = recommended_labels(
                        probabilities, n_recommendations
                    )
                    recommended_probs = recommendation_probabilities(
                        probabilities, recommendations
                    )

            if stop_check == "event" and session.completeness >= threshold:
                done = True
                break

        if on_round is not None:
            on_round(rounds, session.completeness, session.total_clicks)
        done = done or session.completeness >= threshold

    return SimulationResult(
        classifier=classifier,
        uncertainty=uncertainty,
        strategy=rule.name,
        n_images=n_images,
        n_labels=n_labels,
        seed=random_state,
        threshold=threshold,
        stop_check=stop_check,
        initial_completeness=initial,
        clicks=np.array(session.curve_clicks),
        completeness=np.array(session.curve_completeness),
        rounds=rounds,
        proposals=proposals,
        seconds=time.perf_counter() - started,
    )


def _check_inputs(
    features: np.ndarray, true_labels: np.ndarray, threshold: float, batch_size: int
) -> None:
    if features.ndim != 2 or len(features) != len(true_labels):
        raise ValueError(
            f"features must be (n_images, n_features) with one row per label; got "
            f"{features.shape} for {len(true_labels)} labels"
        )
    if len(true_labels) < 2:
        raise ValueError("a simulation needs at least 2 images")
    if true_labels.min() < 0:
        raise ValueError("true labels must be indices 0..n_labels-1")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
