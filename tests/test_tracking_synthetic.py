"""Synthetic crossings, the colour-histogram embedder, and appearance keeping identities."""

from __future__ import annotations

import numpy as np
import pytest

from tracker_service import mot
from tracker_service.tracking import Embedder, HistogramEmbedder, make_tracker
from tracker_service.tracking.synthetic import make_crossing_sequence

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def scenes():
    return {seed: make_crossing_sequence(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def embeddings(scenes):
    embedder = HistogramEmbedder()
    return {
        seed: [embedder.embed(seq.frame(i), d[:, :4]) for i, d in enumerate(seq.detections)]
        for seed, seq in scenes.items()
    }


def test_sequences_are_deterministic_and_seed_dependent():
    a, b, c = (make_crossing_sequence(seed, n_frames=60) for seed in (5, 5, 6))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.frame(30), b.frame(30))
    assert all(np.array_equal(x, y) for x, y in zip(a.detections, b.detections))
    assert not np.array_equal(a.boxes, c.boxes)


def test_scene_has_crossings_occlusions_and_misses(scenes):
    seq = scenes[0]
    occluded = seq.present & (seq.visible < 0.5)
    assert occluded.sum() > 50  # figures really hide each other
    gt = seq.ground_truth()
    n_dets = sum(len(d) for d in seq.detections)
    assert n_dets < len(gt)  # occlusions and misses remove detections
    assert np.all(gt[:, 4] > 0) and np.all(gt[:, 5] > 0)


def test_histogram_embedder_contract():
    embedder = HistogramEmbedder()
    assert isinstance(embedder, Embedder)
    frame = np.zeros((50, 60, 3), dtype=np.uint8)
    frame[:, :30] = [255, 0, 0]
    frame[:, 30:] = [0, 0, 255]
    boxes = np.array([[0, 0, 30, 50], [30, 0, 60, 50], [2, 2, 28, 48], [70, 70, 90, 90]], dtype=float)
    e = embedder.embed(frame, boxes)
    assert e.shape == (4, embedder.dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e[:3], axis=1), 1.0, rtol=1e-5)
    assert np.all(e[3] == 0)  # box outside the image
    assert e[0] @ e[2] > 0.99  # same colour region
    assert e[0] @ e[1] < 0.01  # red vs blue
    assert embedder.embed(frame, np.empty((0, 4))).shape == (0, embedder.dim)


def test_histogram_embedder_keeps_the_layout():
    embedder = HistogramEmbedder()
    frame = np.zeros((40, 40, 3), dtype=np.uint8)
    frame[:20, :20], frame[20:, :20] = [255, 0, 0], [0, 0, 255]  # red over blue
    frame[:20, 20:], frame[20:, 20:] = [0, 0, 255], [255, 0, 0]  # blue over red
    e = embedder.embed(frame, np.array([[0, 0, 20, 40], [20, 0, 40, 40]], dtype=float))
    assert e[0] @ e[1] < 0.5


def test_embeddings_tell_figures_apart(scenes):
    seq = scenes[1]
    embedder = HistogramEmbedder()
    feats: dict[int, list[np.ndarray]] = {}
    for t in range(0, seq.n_frames, 10):
        ks = np.flatnonzero(seq.present[t] & (seq.visible[t] > 0.9))
        for k, f in zip(ks, embedder.embed(seq.frame(t), seq.boxes[t, ks])):
            feats.setdefault(int(k), []).append(f)
    same, other = [], []
    for k, fs in feats.items():
        a = np.array(fs)
        same.append((1 - a @ a.T).max())
        for j, gs in feats.items():
            if j != k:
                other.append((1 - a @ np.array(gs).T).min())
    assert max(same) < min(other)


def _id_switches(name: str, scenes, embeddings) -> int:
    pairs = {}
    for seed, seq in scenes.items():
        tracker = make_tracker(name)
        embed = (lambda i, d, e=embeddings[seed]: e[i - 1]) if name == "deepsort" else None
        pairs[str(seed)] = (seq.ground_truth(), mot.run_tracker(tracker, seq.detections, embed))
    return mot.score_many(pairs)["OVERALL"].id_switches


def test_deepsort_switches_identities_at_most_half_as_often_as_sort(scenes, embeddings):
    sort_switches = _id_switches("sort", scenes, embeddings)
    deep_switches = _id_switches("deepsort", scenes, embeddings)
    assert sort_switches >= 10  # the scenes are hard for motion alone
    assert deep_switches <= sort_switches / 2


def test_deepsort_appearance_matters(scenes, embeddings):
    """Same tracker, embeddings shuffled between detections: identities suffer."""
    rng = np.random.default_rng(0)
    shuffled = {s: [e[rng.permutation(len(e))] for e in es] for s, es in embeddings.items()}
    assert _id_switches("deepsort", scenes, shuffled) > _id_switches("deepsort", scenes, embeddings)
