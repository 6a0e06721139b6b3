"""Per-stream isolation, the guarantee: through :class:`StreamRegistry`, with no server.

* A stream's tracks depend only on its own frames: two streams fed at the same time (the same
  detections or different ones) each give exactly what a tracker fed that stream alone gives, so
  no id or state of one stream can reach the other. Track ids are counted per stream (both
  streams may report an id 1); a track is named by (stream id, track id).
* Within a stream an id is never reused: every new track gets an id above every id issued before,
  and an id whose track was removed never comes back.
* DELETE, or eviction after the idle TTL, then the same stream id again starts from nothing:
  frame counter, tracks and ids as for a stream never seen.

Every preset is checked; DeepSORT gets stand-in embeddings (a function of the box position), enough
to exercise its appearance state.
"""

from __future__ import annotations

import numpy as np
import pytest

from tracker_service.errors import StreamNotFound
from tracker_service.streams import StreamRegistry
from tracker_service.tracking import OUT_ID, PRESETS, make_tracker, needs_embeddings
from tracker_service.tracking.synthetic import make_crossing_sequence

PRESET_NAMES = list(PRESETS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[np.ndarray]]:
    return {
        "a": make_crossing_sequence(seed=3, n_frames=80, n_objects=5).detections,
        "b": make_crossing_sequence(seed=4, n_frames=80, n_objects=6).detections,
    }


def _embeddings(dets: np.ndarray) -> np.ndarray:
    e = np.zeros((len(dets), 8), dtype=np.float32)
    if len(dets):
        e[np.arange(len(dets)), (dets[:, 0] // 50).astype(int) % 8] = 1.0
    return e


async def _feed(reg: StreamRegistry, stream_id: str, dets: np.ndarray) -> np.ndarray:
    """One frame of one stream, as the gateway applies it."""
    async with reg.frame(stream_id, None) as (_, turn):
        stream = await turn()
        return stream.tracker.update(dets, _embeddings(dets) if reg.needs_embeddings else None)


def _alone(name: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    tracker = make_tracker(name)
    use = needs_embeddings(tracker)
    return [tracker.update(d, _embeddings(d) if use else None) for d in frames]


def _assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("name", PRESET_NAMES)
async def test_interleaved_streams_give_what_each_gives_alone(name, scenes):
    reg = StreamRegistry(name, ttl_s=60, max_streams=10)
    out: dict[str, list[np.ndarray]] = {"cam-a": [], "cam-b": []}
    for da, db in zip(scenes["a"], scenes["b"]):
        out["cam-a"].append(await _feed(reg, "cam-a", da))
        out["cam-b"].append(await _feed(reg, "cam-b", db))
    _assert_same(out["cam-a"], _alone(name, scenes["a"]))
    _assert_same(out["cam-b"], _alone(name, scenes["b"]))


@pytest.mark.parametrize("name", PRESET_NAMES)
async def test_streams_fed_the_same_detections_keep_separate_state(name, scenes):
    reg = StreamRegistry(name, ttl_s=60, max_streams=10)
    first, second = [], []
    for d in scenes["a"][:50]:
        first.append(await _feed(reg, "cam-1", d))
        second.append(await _feed(reg, "cam-2", d.copy()))
    _assert_same(second, first)  # same input, same answer: neither saw the other's frames
    one, two = reg._streams["cam-1"].tracker, reg._streams["cam-2"].tracker
    assert one is not two and one.tracks is not two.tracks
    assert len(one.tracks) and not np.shares_memory(one.tracks.ids, two.tracks.ids)
    # one stream moves on alone; the other's state is untouched and continues as if alone
    before = {k: getattr(two.tracks, k).copy() for k in ("ids", "state", "since_update")}
    for d in scenes["b"][:20]:
        await _feed(reg, "cam-1", d)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(two.tracks, k), v)
    rest = [await _feed(reg, "cam-2", d) for d in scenes["a"][50:]]
    _assert_same(second + rest, _alone(name, scenes["a"]))


@pytest.mark.parametrize("name", PRESET_NAMES)
async def test_ids_are_never_reused_within_a_stream(name, scenes):
    reg = StreamRegistry(name, ttl_s=60, max_streams=10)
    # the scene, a gap long enough for every track to be removed, then the scene again
    frames = [*scenes["a"], *[np.empty((0, 6))] * 200, *scenes["a"]]
    issued: set[int] = set()
    removed: set[int] = set()
    alive: set[int] = set()
    emptied_at = None
    for k, d in enumerate(frames):
        out = await _feed(reg, "cam", d)
        table = {int(i) for i in reg._streams["cam"].tracker.tracks.ids}
        born = table - alive
        if born and issued:
            assert min(born) > max(issued), "a new track got an id not above every earlier one"
        assert not table & removed, "an id came back after its track was removed"
        removed |= alive - table
        alive = table
        issued |= born
        assert set(out[:, OUT_ID].astype(int)) <= issued
        if emptied_at is None and issued and not table:
            emptied_at, issued_before = k, len(issued)
    assert emptied_at is not None and emptied_at < len(scenes["a"]) + 200  # the gap removed all ...
    assert len(issued) > issued_before  # ... and the scene's second pass got new ids


@pytest.mark.parametrize("name", PRESET_NAMES)
async def test_delete_then_the_same_stream_id_starts_fresh(name, scenes):
    reg = StreamRegistry(name, ttl_s=60, max_streams=10)
    frames = scenes["a"][:40]
    first = [await _feed(reg, "cam-1", d) for d in frames]
    old = reg._streams["cam-1"]
    reg.delete("cam-1")
    assert "cam-1" not in reg._streams and len(reg) == 0
    with pytest.raises(StreamNotFound):
        reg.delete("cam-1")
    async with reg.frame("cam-1", None) as (n, turn):
        assert n == 0  # the frame counter starts again
        stream = await turn()
    assert stream is not old and stream.tracker is not old.tracker and len(stream.tracker.tracks) == 0
    again = [stream.tracker.update(frames[0], _embeddings(frames[0]) if reg.needs_embeddings else None)]
    again += [await _feed(reg, "cam-1", d) for d in frames[1:]]
    _assert_same(again, first)  # same ids from 1, same tracks: nothing survived the delete


async def test_eviction_after_the_ttl_then_the_same_stream_id_starts_fresh(scenes):
    clock = FakeClock()
    reg = StreamRegistry("sort", ttl_s=10, max_streams=10, clock=clock)
    frames = scenes["a"][:30]
    first = [await _feed(reg, "cam-1", d) for d in frames]
    clock.now = 11
    assert reg.evict_idle() == ["cam-1"]
    _assert_same([await _feed(reg, "cam-1", d) for d in frames], first)


async def test_a_stream_keeps_the_frame_rate_it_was_created_with():
    """`fps` sets the trackers' time constants (seconds -> frames) when a stream is created;
    a frame claiming another rate is refused until the stream is deleted."""
    from tracker_service.errors import InvalidRequest

    reg = StreamRegistry("byte-fps", ttl_s=60, max_streams=10)
    async with reg.frame("slow", 0, fps=7.0):
        pass
    async with reg.frame("fast", 0):
        pass
    slow, fast = reg._streams["slow"], reg._streams["fast"]
    assert slow.frame_rate == 7.0 and fast.frame_rate is None
    assert slow.tracker.frame_rate == 7.0 and fast.tracker.frame_rate == 30.0
    with pytest.raises(InvalidRequest, match="runs at 7 frames/s"):
        async with reg.frame("slow", 1, fps=25.0):
            pass
    async with reg.frame("slow", 2, fps=7.0):  # the same rate, or none, is fine
        pass
    reg.delete("slow")
    async with reg.frame("slow", 0, fps=25.0):
        pass
    assert reg._streams["slow"].tracker.frame_rate == 25.0
    with pytest.raises(InvalidRequest, match="fps"):
        async with reg.frame("bad", 0, fps=float("nan")):
            pass
