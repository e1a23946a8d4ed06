"""Clicks, curves and AUC of the simulated annotator, on cases worked out by hand."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkshift.core.classifiers import CLASSIFIERS, make_label_model
from bulkshift.core.measures import (
    completeness,
    learning_curve_auc,
    manual_baseline,
    oracle_baseline,
)
from bulkshift.core.presort import default_n_clusters, name_by_majority, presort
from bulkshift.core.simulation import simulate


def test_auc_by_hand():
    # area left of the curve: 0.3 * (0 + 0.2) / 2 + 0.2 * (0.2 + 0.4) / 2 = 0.09
    auc = learning_curve_auc(np.array([0, 0.2, 0.4]), np.array([0.5, 0.8, 1.0]))
    assert auc == pytest.approx(0.91)


def test_auc_of_a_one_click_finish_is_almost_one_and_linear_from_zero_is_half():
    assert learning_curve_auc(np.array([0, 1 / 10_000]), np.array([0.0, 1.0])) > 0.9999
    assert learning_curve_auc(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.5


def test_auc_refuses_decreasing_clicks():
    with pytest.raises(ValueError, match="must not decrease"):
        learning_curve_auc(np.array([0.0, 0.5, 0.4]), np.array([0.1, 0.2, 0.3]))


def test_completeness_and_baselines_by_hand():
    true = np.array([0, 0, 1, 1, 2, 2, 2, 2, 1, 0])
    current = np.array([0, 0, 1, 0, 0, 0, 2, 2, 0, 0])
    # misplaced: image 3 (in 0, true 1), 4 and 5 (in 0, true 2), 8 (in 0, true 1)
    assert completeness(current, true) == 0.6

    manual = manual_baseline(current, true, threshold=1.0)
    assert manual["clicks"] == 4
    # straight line from (0, 0.6) to (0.4, 1.0): area 0.4 * 0.4 / 2 = 0.08
    assert manual["auc"] == pytest.approx(0.92)

    # two (folder, true label) groups: (0, 1) x 2 and (0, 2) x 2
    oracle = oracle_baseline(current, true, threshold=1.0)
    assert oracle["clicks"] == 2
    # (0, .6) -> (.1, .8) -> (.2, 1.0): .2 * .1 / 2 + .2 * .3 / 2 = 0.04
    assert oracle["auc"] == pytest.approx(0.96)
    assert oracle_baseline(current, true, threshold=0.8)["clicks"] == 1


# Six images, three labels. A decision tree memorises the current folders, so its
# probabilities are one-hot: each image recommends its own folder first, then the
# other labels in index order, and every image is equally (un)certain, so the round
# shows them in index order. That makes the whole session computable by hand.
FEATURES = np.arange(6, dtype=float).reshape(-1, 1)
TRUE = np.array([0, 0, 1, 1, 2, 2])
START = np.array([0, 0, 0, 0, 2, 2])  # images 2 and 3 (bags) sit in the shoe folder


def run(strategy):
    return simulate(
        FEATURES,
        TRUE,
        classifier="dt",
        uncertainty="entropy",
        strategy=strategy,
        threshold=0.99,
        initial_labels=START,
    )


def test_paper_session_by_hand():
    result = run("paper")
    # image 2: moved shoe -> bag (1 click). Bag is its 2nd recommendation, and the
    # round's images 0, 1, 3 also have bag 2nd: accept (1 click), images 0 and 1 are
    # shoes and get corrected back (2 clicks). Images 3, 4, 5 are then right.
    assert result.clicks.tolist() == [0, 1, 4]
    np.testing.assert_allclose(result.completeness, [4 / 6, 5 / 6, 1.0])
    assert result.rounds == 1
    assert result.proposals_accepted == 1
    assert result.mean_purity == pytest.approx(1 / 3)
    # area: (1/6)(0 + 1/6)/2 + (1/6)(1/6 + 4/6)/2 = 1/72 + 5/72
    assert result.auc == pytest.approx(1 - 6 / 72)


def test_guarded_pool_session_by_hand():
    result = run("guarded-pool")
    # image 2: moved (1 click). Images 0 and 1 were seen and confirmed, so the
    # proposal is image 3 alone, a bag: accepted for 1 click. Done at 100 %.
    assert result.clicks.tolist() == [0, 1, 2]
    assert result.mean_purity == 1.0
    # area: (1/6)(0 + 1/6)/2 + (1/6)(1/6 + 2/6)/2 = 1/72 + 3/72
    assert result.auc == pytest.approx(1 - 4 / 72)


def test_confirmation_clicks_are_charged_when_asked():
    result = simulate(
        FEATURES,
        TRUE,
        classifier="dt",
        strategy="paper",
        initial_labels=START,
        count_confirmations=True,
    )
    # as the paper session, plus images 0 and 1 confirmed before the move (2 clicks)
    # and images 3, 4, 5 confirmed after it (3 clicks)
    assert result.total_clicks == 4 + 5


def test_simulation_is_reproducible_from_its_seed():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(120, 6)) + np.repeat(np.eye(6)[:3] * 3, 40, axis=0)
    labels = np.repeat([0, 1, 2], 40)
    first = simulate(features, labels, classifier="lr", batch_size=20, random_state=5)
    second = simulate(features, labels, classifier="lr", batch_size=20, random_state=5)
    assert first.clicks.tolist() == second.clicks.tolist()
    assert first.completeness.tolist() == second.completeness.tolist()


@st.composite
def small_problems(draw):
    n_labels = draw(st.integers(2, 4))
    n_images = draw(st.integers(n_labels + 2, 40))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n_images)
    labels[:n_labels] = np.arange(n_labels)
    noise = draw(st.floats(0.2, 3.0))
    features = np.eye(n_labels)[labels] * 2 + rng.normal(
        scale=noise, size=(n_images, n_labels)
    )
    return features, labels, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    small_problems(),
    st.sampled_from(["paper", "paper-ui", "guarded-pool"]),
    st.sampled_from(["lr", "dt"]),
    st.sampled_from(["entropy", "margin", "least_confidence", "ratio"]),
)
def test_completeness_never_drops_and_auc_stays_in_unit_interval(
    problem, strategy, classifier, measure
):
    features, labels, seed = problem
    result = simulate(
        features,
        labels,
        classifier=classifier,
        uncertainty=measure,
        strategy=strategy,
        batch_size=7,
        threshold=1.0,
        random_state=seed,
    )
    assert np.all(np.diff(result.completeness) >= -1e-12)
    assert np.all(np.diff(result.clicks) >= 0)
    assert 0.0 <= result.auc <= 1.0
    # with threshold 1.0 the person sees every image, so every image ends right
    assert result.final_completeness == 1.0


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_every_classifier_gives_probabilities_over_the_full_label_set(name):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 4))
    labels = np.repeat([0, 2, 3], 20)  # label 1 has no image, label 4 neither
    model = make_label_model(name, n_labels=5, random_state=0).fit(features, labels)
    probabilities = model.predict_proba(features)
    assert probabilities.shape == (60, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(probabilities[:, [1, 4]] == 0)


def test_single_label_training_is_certain_of_it():
    model = make_label_model("lr", n_labels=3).fit(np.zeros((4, 2)), np.full(4, 2))
    assert model.predict_proba(np.zeros((2, 2))).tolist() == [[0, 0, 1], [0, 0, 1]]


def test_classifier_rejects_labels_outside_the_set():
    with pytest.raises(ValueError, match="label index 7"):
        make_label_model("lr", n_labels=3).fit(np.zeros((2, 2)), np.array([0, 7]))


def test_presort_groups_separated_points_and_names_by_majority():
    features = np.array([[0, 0], [0, 1], [10, 10], [10, 11], [0, 0.5]], dtype=float)
    folders = presort(features, n_clusters=2, random_state=0)
    assert len(set(folders.assignments[[0, 1, 4]])) == 1
    assert folders.assignments[2] == folders.assignments[3] != folders.assignments[0]
    names = name_by_majority(folders.assignments, np.array([1, 1, 0, 0, 0]), 2)
    assert names[folders.assignments[0]] == 1 and names[folders.assignments[2]] == 0
    nearest = folders.members_nearest_first(folders.assignments[0])
    assert nearest[0] == 4  # (0, 0.5) is the centre of the three


def test_default_number_of_clusters():
    assert [default_n_clusters(n) for n in (1, 3, 30, 3000, 100_000)] == [
        1,
        2,
        3,
        27,
        30,
    ]


def test_prefix_review_accepts_up_to_the_best_cut_off():
    from bulkshift.core.proposals import Proposal, STRATEGIES
    from bulkshift.core.simulation import _resolve_proposal, _Session

    # Five proposed images for destination 1, most confident first: bag, shoe, bag,
    # bag, shoe. Net images fixed minus clicks per cut-off, with one accept click and
    # one untick per stray above it: 0, -1, 0, 1, 0 -> accept the first four.
    true = np.array([0, 1, 0, 1, 1, 0])
    session = _Session(np.zeros(6, dtype=int), true)
    proposal = Proposal(
        seed=0,
        source=0,
        destination=1,
        rank=1,
        members=np.array([1, 2, 3, 4, 5]),
        confidence=np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
    )
    record = _resolve_proposal(session, proposal, STRATEGIES["guarded-pool"])
    assert record["accepted"] and record["accepted_size"] == 3
    assert session.total_clicks == 2  # accept "up to here" + untick image 2
    assert session.current.tolist() == [0, 1, 0, 1, 1, 0]
    assert record["purity"] == pytest.approx(3 / 5)


def test_prefix_review_leaves_a_useless_proposal_alone():
    from bulkshift.core.proposals import Proposal, STRATEGIES
    from bulkshift.core.simulation import _resolve_proposal, _Session

    true = np.array([0, 0, 0])
    session = _Session(np.zeros(3, dtype=int), true)
    proposal = Proposal(0, 0, 1, 0, np.array([1, 2]), np.array([0.6, 0.5]))
    record = _resolve_proposal(session, proposal, STRATEGIES["guarded-pool"])
    assert not record["accepted"]
    assert session.total_clicks == 0


def test_confirmed_labels_outweigh_machine_labels_on_the_same_image():
    from bulkshift.core.classifiers import confirmed_weights, pool_probabilities

    assert confirmed_weights(None, 5.0) is None
    assert confirmed_weights(np.array([True, False]), 1.0) is None
    assert confirmed_weights(np.array([True, False]), 5.0).tolist() == [5.0, 1.0]

    # Two identical images disagree: a person says 0, the machine says 1. Unweighted,
    # a model cannot prefer either; with the person's label weighted 5x it must
    # prefer 0 (a decision tree leaf then holds 5/6 of the weight for label 0).
    features = np.zeros((2, 1))
    labels = np.array([0, 1])
    confirmed = np.array([True, False])
    plain = pool_probabilities(features, labels, 2, "dt")
    weighted = pool_probabilities(
        features, labels, 2, "dt", confirmed=confirmed, confirmed_weight=5.0
    )
    np.testing.assert_allclose(plain[0], [0.5, 0.5])
    np.testing.assert_allclose(weighted[0], [5 / 6, 1 / 6])


def test_out_of_fold_probabilities_judge_an_image_by_the_others():
    from bulkshift.core.classifiers import pool_probabilities

    # One shoe sits among bags. In-sample, a 1-nearest-neighbour tree memorises its
    # wrong folder; out of fold, its neighbours decide.
    features = np.array([[0.0], [0.1], [0.2], [0.3], [0.05]])
    labels = np.array([1, 1, 1, 1, 0])
    in_sample = pool_probabilities(features, labels, 2, "dt")
    out_of_fold = pool_probabilities(features, labels, 2, "dt", out_of_fold=5)
    assert in_sample[4].tolist() == [1.0, 0.0]
    assert out_of_fold[4].tolist() == [0.0, 1.0]
