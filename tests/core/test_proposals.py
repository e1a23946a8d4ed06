"""The bulk-shift rule on a small case worked out by hand, for each strategy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkshift.core.proposals import (
    STRATEGIES,
    UnknownStrategyError,
    get_strategy,
    propose_bulk_shift,
)

# Labels: 0 = shoe, 1 = bag, 2 = shirt. Seven images.
#   image:                0  1  2  3  4  5  6
CURRENT = np.array([0, 0, 0, 0, 2, 1, 0])
RECOMMENDATIONS = np.array(
    [
        [0, 1, 2],  # 0: seed, moved shoe -> bag; bag is its 2nd recommendation
        [0, 1, 2],  # 1: in shoe, 2nd recommendation bag -> follows
        [1, 0, 2],  # 2: in shoe, but bag is its 1st recommendation -> stays
        [2, 1, 0],  # 3: in shoe, 2nd recommendation bag -> follows
        [0, 1, 2],  # 4: in shirt (other source), 2nd recommendation bag
        [0, 1, 2],  # 5: already in bag, 2nd recommendation bag
        [0, 1, 2],  # 6: in shoe, 2nd recommendation bag, confirmed by a person
    ]
)
PROBABILITIES = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.5, 0.3, 0.2],
        [0.7, 0.2, 0.1],
        [0.4, 0.35, 0.25],
        [0.5, 0.4, 0.1],
        [0.5, 0.45, 0.05],
        [0.6, 0.38, 0.02],
    ]
)
CONFIRMED = np.array([True, False, False, False, False, False, True])
ROUND = np.array([0, 1, 2, 3, 4, 5])  # image 6 is not in this round


def propose(name, **overrides):
    arguments = dict(
        round_members=ROUND,
        confirmed=CONFIRMED,
        recommendation_probabilities=PROBABILITIES,
    )
    arguments.update(overrides)
    current = CURRENT.copy()
    current[0] = 1  # the person's move has been applied
    return propose_bulk_shift(
        0, 0, 1, current, RECOMMENDATIONS, STRATEGIES[name], **arguments
    )


def test_paper_takes_any_source_and_images_already_in_destination():
    proposal = propose("paper")
    assert proposal.rank == 1
    assert proposal.members.tolist() == [1, 3, 4, 5]


def test_paper_ui_adds_the_same_source_condition():
    assert propose("paper-ui").members.tolist() == [1, 3]


def test_guarded_pool_searches_everything_but_protects_confirmed_most_confident_first():
    proposal = propose("guarded-pool")
    # candidates in the pool from shoe with 2nd recommendation bag: 1, 3, 6;
    # 6 is confirmed. Confidence of bag: image 3 has 0.35, image 1 has 0.3.
    assert proposal.members.tolist() == [3, 1]
    np.testing.assert_allclose(proposal.confidence, [0.35, 0.3])


def test_guarded_pool_without_confirmations_includes_the_person_s_image():
    proposal = propose("guarded-pool", confirmed=None)
    assert proposal.members.tolist() == [6, 3, 1]


def test_no_proposal_when_destination_not_recommended():
    recommendations = RECOMMENDATIONS[:, :2]  # shirt (2) is nowhere in the top two
    current = CURRENT.copy()
    current[0] = 2
    proposal = propose_bulk_shift(
        0, 0, 2, current, recommendations, STRATEGIES["paper"], round_members=ROUND
    )
    assert proposal is None


def test_no_proposal_for_a_move_to_the_same_label():
    assert (
        propose_bulk_shift(
            0, 1, 1, CURRENT, RECOMMENDATIONS, STRATEGIES["guarded-pool"]
        )
        is None
    )


def test_round_strategy_without_round_members_says_what_to_pass():
    with pytest.raises(ValueError, match="round_members"):
        propose("paper", round_members=None)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(UnknownStrategyError, match="guarded-pool"):
        get_strategy("greedy")


@st.composite
def pools(draw):
    n_images = draw(st.integers(2, 25))
    n_labels = draw(st.integers(2, 5))
    labels = st.integers(0, n_labels - 1)
    current = np.array(draw(st.lists(labels, min_size=n_images, max_size=n_images)))
    scores = np.array(
        draw(
            st.lists(
                st.lists(st.floats(0, 1), min_size=n_labels, max_size=n_labels),
                min_size=n_images,
                max_size=n_images,
            )
        )
    )
    recommendations = np.argsort(-scores, axis=1, kind="stable")
    confirmed = np.array(
        draw(st.lists(st.booleans(), min_size=n_images, max_size=n_images))
    )
    seed = draw(st.integers(0, n_images - 1))
    destination = draw(labels)
    return current, recommendations, confirmed, seed, destination, scores


@settings(max_examples=200, deadline=None)
@given(pools(), st.sampled_from(sorted(STRATEGIES)))
def test_rule_matches_a_naive_reference(pool, name):
    current, recommendations, confirmed, seed, destination, _ = pool
    rule = STRATEGIES[name]
    source = current[seed]
    round_members = np.arange(0, len(current), 2)
    proposal = propose_bulk_shift(
        seed,
        source,
        destination,
        current,
        recommendations,
        rule,
        round_members=round_members,
        confirmed=confirmed,
    )

    expected = []
    seed_row = list(recommendations[seed])
    if source != destination and destination in seed_row:
        rank = seed_row.index(destination)
        for image in range(len(current)):
            if image == seed or recommendations[image][rank] != destination:
                continue
            if rule.scope == "round" and image not in set(round_members):
                continue
            if rule.same_source and current[image] != source:
                continue
            if rule.skip_destination and current[image] == destination:
                continue
            if rule.protect_confirmed and confirmed[image]:
                continue
            expected.append(image)

    got = [] if proposal is None else sorted(proposal.members.tolist())
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(pools())
def test_our_strategies_never_propose_a_confirmed_image(pool):
    current, recommendations, confirmed, seed, destination, scores = pool
    for rule in STRATEGIES.values():
        if not rule.protect_confirmed:
            continue
        proposal = propose_bulk_shift(
            seed,
            current[seed],
            destination,
            current,
            recommendations,
            rule,
            round_members=np.arange(len(current)),
            confirmed=confirmed,
            recommendation_probabilities=np.take_along_axis(scores, recommendations, 1),
        )
        if proposal is not None:
            assert not confirmed[proposal.members].any()
            assert np.all(np.diff(proposal.confidence) <= 0)
