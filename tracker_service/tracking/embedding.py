"""Appearance embeddings for DeepSORT-style association.

:class:`HistogramEmbedder` needs no weights: it describes a box by the colours inside it, which is
enough to tell apart people in differently coloured clothes when they cross. A learned re-id model
served by Triton can replace it behind the same :class:`Embedder` protocol.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np

__all__ = ["Embedder", "HistogramEmbedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns the boxes of one frame into appearance vectors (one row per box)."""

    def embed(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``frame`` (H, W, 3) uint8 RGB, ``boxes`` (N, 4) ``x1, y1, x2, y2`` -> (N, D) float32."""
        ...


class HistogramEmbedder:
    """HSV colour histograms of each box, in horizontal stripes, as unit vectors.

    * Hue x saturation bins for coloured pixels and brightness bins for grey ones: hue is
      stable under lighting changes, but is meaningless when a pixel has no colour.
    * ``stripes`` horizontal bands (top/bottom by default) keep the layout: a red shirt over
      blue trousers is not blue over red.
    * Only the central ``inner`` fraction of the box width is used, to leave out background.
    * Each band's histogram is normalised to sum 1 and square-rooted (the Hellinger map), so that
      the cosine similarity of two embeddings is the mean Bhattacharyya coefficient of their
      bands: a proper similarity of distributions rather than of raw counts.

    The whole frame is binned once per call (one vectorised pass), after which each box costs a
    single ``bincount`` over its pixels.
    """

    def __init__(
        self,
        hue_bins: int = 16,
        sat_bins: int = 4,
        gray_bins: int = 8,
        stripes: int = 2,
        inner: float = 0.8,
        min_saturation: int = 48,
        min_value: int = 32,
        max_pixels: int = 4096,
    ) -> None:
        self.hue_bins = hue_bins
        self.sat_bins = sat_bins
        self.gray_bins = gray_bins
        self.stripes = stripes
        self.inner = inner
        self.min_saturation = min_saturation
        self.min_value = min_value
        self.max_pixels = max_pixels
        self.bins = hue_bins * sat_bins + gray_bins

    @property
    def dim(self) -> int:
        return self.bins * self.stripes

    def _bin_map(self, rgb: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)  # H in [0, 180)
        h = hsv[..., 0].astype(np.int32)
        s = hsv[..., 1].astype(np.int32)
        v = hsv[..., 2].astype(np.int32)
        colour = (h * self.hue_bins // 180) * self.sat_bins + s * self.sat_bins // 256
        grey = self.hue_bins * self.sat_bins + v * self.gray_bins // 256
        coloured = (s >= self.min_saturation) & (v >= self.min_value)
        return np.where(coloured, colour, grey)

    def embed(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.zeros((len(boxes), self.dim), dtype=np.float32)
        if len(boxes) == 0:
            return out
        H, W = frame.shape[:2]
        # Box extents, shrunk to the inner part of the width and clipped to the image.
        cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
        half = (boxes[:, 2] - boxes[:, 0]) * self.inner / 2.0
        x1 = np.clip(np.floor(cx - half), 0, W).astype(int)
        x2 = np.clip(np.ceil(cx + half), 0, W).astype(int)
        y1 = np.clip(np.floor(boxes[:, 1]), 0, H).astype(int)
        y2 = np.clip(np.ceil(boxes[:, 3]), 0, H).astype(int)
        live = (x2 > x1) & (y2 > y1)
        if not live.any():
            return out
        # Bin only the region the boxes cover.
        ox, oy = x1[live].min(), y1[live].min()
        bins = self._bin_map(frame[oy : y2[live].max(), ox : x2[live].max()])
        for i in np.flatnonzero(live):
            crop = bins[y1[i] - oy : y2[i] - oy, x1[i] - ox : x2[i] - ox]
            step = max(1, int(np.sqrt(crop.size / self.max_pixels)))  # subsample big boxes
            crop = crop[::step, ::step]
            edges = np.linspace(0, crop.shape[0], self.stripes + 1).astype(int)
            for k in range(self.stripes):
                band = crop[edges[k] : edges[k + 1]]
                if band.size:
                    hist = np.bincount(band.ravel(), minlength=self.bins).astype(np.float32)
                    out[i, k * self.bins : (k + 1) * self.bins] = np.sqrt(hist / band.size)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
