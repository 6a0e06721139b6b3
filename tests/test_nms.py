"""tracker_service.nms directly: the NMS Triton's detector and the drift reference both run.

Parity with Ultralytics' own NMS on random inputs is in test_parity.py; these pin the rules one
at a time on inputs small enough to reason about.
"""

from __future__ import annotations

import numpy as np

from tracker_service.nms import nms, postprocess


def raw_from(boxes_xywh: list[list[float]], class_scores: list[list[float]]) -> np.ndarray:
    """A head output [4 + nc, N] from N boxes (cx, cy, w, h) and their per-class scores."""
    return np.concatenate([np.asarray(boxes_xywh, np.float32).T,
                           np.asarray(class_scores, np.float32).T])


def test_nms_keeps_the_best_of_overlapping_boxes_and_orders_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.95).tolist() == [1, 2, 0]  # IoU 0.82 is under this threshold


def test_nms_of_nothing_is_nothing():
    kept = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5)
    assert kept.dtype == np.int64 and kept.shape == (0,)


def test_per_class_nms_never_suppresses_across_classes():
    # Two near-identical boxes: one class each -> both kept; same class -> one kept.
    boxes = [[100, 100, 40, 40], [101, 100, 40, 40]]
    two_classes = postprocess(raw_from(boxes, [[0.9, 0.0], [0.0, 0.8]]), 0.25, 0.5, 300)
    assert sorted(two_classes[:, 5].tolist()) == [0.0, 1.0]
    one_class = postprocess(raw_from(boxes, [[0.9, 0.0], [0.8, 0.0]]), 0.25, 0.5, 300)
    assert one_class.shape == (1, 6) and one_class[0, 4] == np.float32(0.9)


def test_boxes_come_back_as_xyxy_with_score_and_class():
    out = postprocess(raw_from([[100, 50, 40, 20]], [[0.1, 0.6, 0.3]]), 0.25, 0.5, 300)
    np.testing.assert_allclose(out, [[80, 40, 120, 60, 0.6, 1]])
    assert out.dtype == np.float32


def test_conf_is_a_strict_lower_bound_on_the_best_class_score():
    boxes = [[20 + 50 * i, 20, 10, 10] for i in range(4)]
    scores = [[0.2, 0.1], [0.25, 0.0], [0.1, 0.3], [0.9, 0.95]]
    out = postprocess(raw_from(boxes, scores), 0.25, 0.5, 300)
    assert out[:, 4].tolist() == [np.float32(0.95), np.float32(0.3)]
    assert out[:, 5].tolist() == [1.0, 1.0]


def test_max_det_keeps_the_highest_scores():
    n = 20
    boxes = [[20 + 30 * i, 20, 10, 10] for i in range(n)]  # none overlap
    scores = [[0.3 + 0.02 * i] for i in range(n)]
    out = postprocess(raw_from(boxes, scores), 0.25, 0.5, 5)
    assert out.shape == (5, 6)
    np.testing.assert_allclose(out[:, 4], [0.3 + 0.02 * i for i in range(n - 1, n - 6, -1)],
                               rtol=1e-6)


def test_empty_input_and_nothing_above_conf_give_no_rows():
    assert postprocess(np.zeros((84, 0), np.float32), 0.25, 0.7, 300).shape == (0, 6)
    assert postprocess(np.zeros((84, 100), np.float32), 0.25, 0.7, 300).shape == (0, 6)
