"""Exact and near-duplicate images, without comparing every pair.

Exact: images with the same sha256. Near: 64-bit perceptual hashes within `max_bits` of each
other (Hamming distance). By the pigeonhole principle, two hashes that differ in at most d bits
agree exactly on at least one of d + 1 disjoint bit blocks; so each hash is put in d + 1 buckets
(block index, block value) and only hashes sharing a bucket are compared. On 5,000 unrelated
images that is a few thousand comparisons instead of 12.5 million.

A hash match alone is not enough: pHash keeps the signs of an image's lowest frequencies and
drops its colour and brightness, so plain, low-contrast scenes collide. On 5,000 generated
640-px scenes (bench/dataset_import.py) 40 pairs of plainly different images were within 4
bits (one pair at 0). `confirmed` keeps a pair only when the images' 16 x 16 colour thumbnails
also differ by at most NEAR_MAD levels (of 255) on average: re-encoding at quality 50, halving
the size or cropping 5% moved a thumbnail by 0.5-1.2 levels, brightening by 6 levels by 6.0,
while the closest of those 40 unrelated pairs differed by 14.4.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

HASH_BITS = 64
NEAR_MAD = 8.0  # mean absolute difference of the 16 x 16 x 3 thumbnails, levels of 255


def exact_groups(digests: Sequence[str]) -> list[list[int]]:
    """Indices of images with identical digests, groups of two or more (empty digests skipped)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d:
            groups[d].append(i)
    return [g for g in groups.values() if len(g) > 1]


def near_pairs(hashes: Sequence[int | None], max_bits: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j whose hashes differ in at most `max_bits` bits (None skipped)."""
    if max_bits < 0:
        return []
    blocks = min(int(max_bits) + 1, HASH_BITS)
    bounds = [round(k * HASH_BITS / blocks) for k in range(blocks + 1)]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        if h is None:
            continue
        for k in range(blocks):
            lo, hi = bounds[k], bounds[k + 1]
            buckets[(k, (h >> lo) & ((1 << (hi - lo)) - 1))].append(i)
    seen: set[tuple[int, int]] = set()
    found: list[tuple[int, int, int]] = []
    for members in buckets.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                pair = (members[a], members[b])
                if pair in seen:
                    continue
                seen.add(pair)
                d = (hashes[pair[0]] ^ hashes[pair[1]]).bit_count()
                if d <= max_bits:
                    found.append((*pair, d))
    return sorted(found)


def thumbnail_mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def confirmed(pairs: list[tuple[int, int, int]], thumbs: Sequence[np.ndarray | None],
              max_mad: float = NEAR_MAD) -> list[tuple[int, int, int]]:
    """The hash pairs whose thumbnails also agree (within `max_mad` levels on average)."""
    return [(i, j, d) for i, j, d in pairs if thumbs[i] is not None and thumbs[j] is not None
            and thumbs[i].shape == thumbs[j].shape
            and thumbnail_mad(thumbs[i], thumbs[j]) <= max_mad]
