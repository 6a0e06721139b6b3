"""Association rules as pure functions, on hand-made boxes and matrices."""

from __future__ import annotations

import numpy as np

from tracker_service.tracking.association import (
    CHI2_95,
    INFEASIBLE,
    assign,
    cosine_distance,
    direction_consistency,
    gate,
    iou_matrix,
    linear_assignment,
)


def test_iou_matrix_known_values():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    b = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50.0 / 150.0, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])


def test_iou_matrix_empty_and_degenerate():
    assert iou_matrix(np.empty((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert iou_matrix(np.ones((2, 4)), np.empty((0, 4))).shape == (2, 0)
    point = np.array([[5.0, 5.0, 5.0, 5.0]])
    assert iou_matrix(point, point)[0, 0] == 0.0  # no division by zero


def test_iou_matrix_is_symmetric():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (6, 2))], axis=1)
    iou = iou_matrix(boxes, boxes)
    np.testing.assert_allclose(iou, iou.T)
    np.testing.assert_allclose(np.diag(iou), 1.0)


def test_linear_assignment_finds_the_optimum():
    cost = np.array([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    pairs = linear_assignment(cost)
    assert cost[pairs[:, 0], pairs[:, 1]].sum() == 5.0  # (0,1) (1,0) (2,2)
    assert sorted(map(tuple, pairs)) == [(0, 1), (1, 0), (2, 2)]


def test_linear_assignment_rectangular():
    cost = np.array([[1.0, 0.0, 5.0, 9.0], [0.0, 3.0, 7.0, 9.0]])
    pairs = linear_assignment(cost)
    assert sorted(map(tuple, pairs)) == [(0, 1), (1, 0)]
    assert linear_assignment(np.empty((0, 3))).shape == (0, 2)


def test_assign_shortcut_when_unambiguous():
    cost = np.array([[0.1, 0.9], [0.9, 0.2], [0.9, 0.9]])
    pairs, free_rows, free_cols = assign(cost, cost < 0.5)
    assert sorted(map(tuple, pairs)) == [(0, 0), (1, 1)]
    assert list(free_rows) == [2] and list(free_cols) == []


def test_assign_rejects_forbidden_pairs():
    cost = np.array([[0.1, 0.2], [0.3, 0.9]])
    valid = np.array([[True, True], [True, False]])
    pairs, free_rows, free_cols = assign(cost, valid)
    # the optimum over allowed pairs is (0,1)+(1,0); (1,1) is never taken
    assert sorted(map(tuple, pairs)) == [(0, 1), (1, 0)]
    assert len(free_rows) == 0 and len(free_cols) == 0


def test_gating_first_never_lets_a_forbidden_pair_displace_an_allowed_one():
    # Raw optimum is (0,0)+(1,1) = 0.0, but (1,1) is forbidden; (0,1)+(1,0) are both allowed.
    cost = np.array([[0.0, 0.5], [0.5, 0.0]])
    valid = np.array([[True, True], [True, False]])
    gated, _, _ = assign(cost, valid, gate_first=True)
    raw, free_rows, _ = assign(cost, valid, gate_first=False)
    assert sorted(map(tuple, gated)) == [(0, 1), (1, 0)]
    assert sorted(map(tuple, raw)) == [(0, 0)] and list(free_rows) == [1]  # reference SORT's way


def test_assign_empty():
    pairs, rows, cols = assign(np.empty((0, 2)), np.empty((0, 2), dtype=bool))
    assert pairs.shape == (0, 2) and list(cols) == [0, 1] and len(rows) == 0


def test_cosine_distance():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    d = cosine_distance(a, b)
    np.testing.assert_allclose(d[0], [0.0, 2.0, 1 - np.sqrt(0.5)])
    np.testing.assert_allclose(d[1], [1.0, 1.0, 1 - np.sqrt(0.5)])


def test_gate_marks_implausible_pairs_infeasible():
    cost = np.array([[0.1, 0.2]])
    maha = np.array([[1.0, 20.0]])
    gated = gate(cost, maha, CHI2_95[4])
    assert gated[0, 0] == 0.1 and gated[0, 1] == INFEASIBLE
    assert cost[0, 1] == 0.2  # input untouched


def test_direction_consistency_rewards_continuing_motion():
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5)
    moving_right = np.array([[0.0, 1.0]])  # (dy, dx)
    ahead = np.array([[20.0, 0.0, 30.0, 10.0]])
    behind = np.array([[-20.0, 0.0, -10.0, 10.0]])
    aside = np.array([[0.0, 20.0, 10.0, 30.0]])
    s = direction_consistency(np.concatenate([ahead, behind, aside]), anchor, moving_right)
    np.testing.assert_allclose(s[:, 0], [0.5, -0.5, 0.0], atol=1e-3)
    still = direction_consistency(ahead, anchor, np.zeros((1, 2)))
    assert still[0, 0] == 0.0
