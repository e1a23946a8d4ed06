"""Hand-computed cases for the uncertainty measures and the recommended labels."""

import numpy as np
import pytest

from bulkshift.core.ranking import recommendation_probabilities, recommended_labels
from bulkshift.core.uncertainty import (
    MEASURES,
    UnknownMeasureError,
    certainty_score,
    entropy,
    least_confidence,
    margin,
    rank_by_uncertainty,
    ratio,
    uncertainty,
)

# Three images over three labels: a lean, a certainty and a tie.
PROBABILITIES = np.array(
    [
        [0.5, 0.3, 0.2],
        [1.0, 0.0, 0.0],
        [0.4, 0.4, 0.2],
    ]
)


def test_least_confidence_is_one_minus_best():
    np.testing.assert_allclose(least_confidence(PROBABILITIES), [0.5, 0.0, 0.6])


def test_margin_is_best_minus_second():
    np.testing.assert_allclose(margin(PROBABILITIES), [0.2, 1.0, 0.0])


def test_entropy_by_hand_with_zero_log_zero():
    # -(0.5 ln 0.5 + 0.3 ln 0.3 + 0.2 ln 0.2) = 0.34657 + 0.36119 + 0.32189
    # the certain image has entropy 0, not NaN, although it contains p = 0
    # -(2 * 0.4 ln 0.4 + 0.2 ln 0.2) = 0.73303 + 0.32189
    np.testing.assert_allclose(
        entropy(PROBABILITIES), [1.029653, 0.0, 1.054920], atol=1e-6
    )


def test_ratio_is_second_over_best():
    np.testing.assert_allclose(ratio(PROBABILITIES), [0.6, 0.0, 1.0])


@pytest.mark.parametrize("measure", list(MEASURES))
def test_every_measure_ranks_tie_first_and_certainty_last(measure):
    assert rank_by_uncertainty(PROBABILITIES, measure).tolist() == [2, 0, 1]


def test_margin_is_oriented_so_larger_means_more_uncertain():
    np.testing.assert_allclose(uncertainty(PROBABILITIES, "margin"), [-0.2, -1.0, 0.0])


def test_equal_uncertainty_keeps_index_order():
    same = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.5, 0.5]])
    assert rank_by_uncertainty(same, "entropy").tolist() == [0, 2, 3, 1]


def test_ranking_restricted_to_candidates_returns_global_indices():
    unseen = np.array([True, True, False])
    assert rank_by_uncertainty(PROBABILITIES, "entropy", unseen).tolist() == [0, 1]
    assert rank_by_uncertainty(PROBABILITIES, "entropy", np.array([1, 2])).tolist() == [
        2,
        1,
    ]


def test_certainty_score_by_hand():
    np.testing.assert_allclose(
        certainty_score(PROBABILITIES, "least_confidence"), [0.5, 1.0, 0.4]
    )
    np.testing.assert_allclose(
        certainty_score(PROBABILITIES, "margin"), [0.2, 1.0, 0.0]
    )
    np.testing.assert_allclose(certainty_score(PROBABILITIES, "ratio"), [0.4, 1.0, 0.0])
    # 1 - H / ln 3, ln 3 = 1.098612
    np.testing.assert_allclose(
        certainty_score(PROBABILITIES, "entropy"),
        [1 - 1.029653 / 1.098612, 1.0, 1 - 1.054920 / 1.098612],
        atol=1e-6,
    )


@pytest.mark.parametrize("measure", list(MEASURES))
def test_ascending_score_is_the_uncertainty_order(measure):
    rng = np.random.default_rng(7)
    probabilities = rng.dirichlet(np.ones(5), size=40)
    by_score = np.argsort(certainty_score(probabilities, measure), kind="stable")
    assert by_score.tolist() == rank_by_uncertainty(probabilities, measure).tolist()


def test_unknown_measure_names_the_choices():
    with pytest.raises(UnknownMeasureError, match="'variance'.*least_confidence"):
        uncertainty(PROBABILITIES, "variance")


def test_one_dimensional_probabilities_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        uncertainty(np.array([0.2, 0.8]), "entropy")


def test_recommendations_best_first_ties_by_label_index():
    probabilities = np.array([[0.2, 0.4, 0.4, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert recommended_labels(probabilities, 3).tolist() == [[1, 2, 0], [3, 2, 1]]


def test_recommendations_never_repeat_a_label_and_cap_at_label_count():
    uniform = np.full((2, 4), 0.25)
    recommendations = recommended_labels(uniform, 10)
    assert recommendations.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_recommendation_probabilities_follow_the_ranking():
    probabilities = np.array([[0.2, 0.5, 0.3]])
    recommendations = recommended_labels(probabilities, 2)
    np.testing.assert_allclose(
        recommendation_probabilities(probabilities, recommendations), [[0.5, 0.3]]
    )
