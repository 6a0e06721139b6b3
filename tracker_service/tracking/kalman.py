"""Constant-velocity Kalman filters for boxes, vectorised across all tracks of a tracker.

Reference SORT keeps one filterpy object per track and pays Python overhead per track per frame.
Here a tracker keeps every track's state in two stacked arrays, ``x`` (N, dim) and ``P``
(N, dim, dim), and one numpy call predicts or updates all of them at once. The measurement is
always the first four state components (``H = [I 0]``), so ``H P`` and ``H P H'`` are slices,
not products.

Two parametrisations, each the published one:

* :class:`SortMotion` -- Bewley et al. (SORT, 2016): state ``[cx, cy, s, r, vx, vy, vs]`` with
  ``s`` the area and ``r`` the aspect ratio (constant), fixed noise matrices. Also OC-SORT's.
* :class:`XyahMotion` -- Wojke et al. (DeepSORT, 2017): state ``[cx, cy, a, h, vx, vy, va, vh]``
  with noise proportional to the box height, which is what makes Mahalanobis gating meaningful
  across near and far objects.

Functions take and return arrays; the ``predict``/``update`` methods modify ``x`` and ``P`` in
place (no per-frame allocation of the whole state) and return them for convenience. Reference
SORT's per-track filterpy filter, the oracle these are checked against, lives with the tests
(``tests/tracking_reference.py``): filterpy is not needed at run time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["BoxMotion", "SortMotion", "XyahMotion", "XywhMotion", "replay", "xyxy_to_xysr", "xysr_to_xyxy"]


class BoxMotion(Protocol):
    """What a tracker needs from a motion model; states are stacked rows."""

    dim: int

    def initiate(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def predict(self, x: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def update(
        self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def to_xyxy(self, x: np.ndarray) -> np.ndarray: ...

    def valid(self, x: np.ndarray) -> np.ndarray: ...


def xyxy_to_xysr(boxes: np.ndarray) -> np.ndarray:
    """(N,4) corners -> (N,4) centre, area, aspect ratio w/h (the SORT measurement)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2.0, boxes[:, 1] + h / 2.0, w * h, w / h], axis=1)


def xysr_to_xyxy(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`xyxy_to_xysr`. Needs ``s * r > 0``: see :meth:`SortMotion.valid`."""
    w = np.sqrt(z[:, 2] * z[:, 3])
    h = z[:, 2] / w
    cx, cy = z[:, 0], z[:, 1]
    return np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=1)


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N,4) corners -> (N,4) centre, aspect ratio w/h, height (the DeepSORT measurement)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2.0, boxes[:, 1] + h / 2.0, w / h, h], axis=1)


def xyah_to_xyxy(z: np.ndarray) -> np.ndarray:
    w = z[:, 2] * z[:, 3]
    h = z[:, 3]
    cx, cy = z[:, 0], z[:, 1]
    return np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], axis=1)


def _gain_update(
    x: np.ndarray, P: np.ndarray, z: np.ndarray, r: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Kalman update of stacked states with ``H = [I4 0]`` and diagonal measurement noise ``r``.

    Every model here moves each coordinate on its own (``F`` ties a coordinate only to its own
    velocity; ``Q``, ``R`` and the initial ``P`` are diagonal), so the covariance never
    correlates two coordinates and the innovation covariance ``S = H P H' + R`` is diagonal: the
    gain is a division, with no matrix inverse and no LAPACK call (whose thread pool costs more
    than the arithmetic on matrices this small). ``r`` is (4,) or (N, 4).
    """
    PHt = P[:, :, :4]  # P H'  (N, dim, 4)
    s = np.diagonal(P, axis1=1, axis2=2)[:, :4] + r  # diag(S)  (N, 4)
    K = PHt / s[:, None, :]  # (N, dim, 4)
    innovation = z - x[:, :4]
    x = x + np.einsum("nij,nj->ni", K, innovation)
    P = P - np.einsum("nik,njk->nij", K, PHt)  # (I - K H) P, with H P = (P H')'
    return x, P


class SortMotion:
    """SORT's filter: area and aspect ratio, constant noise (values from Bewley's sort.py).

    Measurement noise is 10x larger on area and ratio than on the centre; initial velocity
    variance is huge because a single box says nothing about motion.
    """

    dim = 7

    def __init__(self) -> None:
        self.r = np.array([1.0, 1.0, 10.0, 10.0])  # diagonal of R
        self.P0 = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])
        self.q = np.array([1.0, 1.0, 1.0, 1.0, 1e-2, 1e-2, 1e-4])
        self._diag = np.arange(self.dim)

    def initiate(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(boxes)
        x = np.zeros((n, self.dim))
        x[:, :4] = xyxy_to_xysr(boxes)
        P = np.broadcast_to(self.P0, (n, self.dim, self.dim)).copy()
        return x, P

    def predict(self, x: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # An area about to go negative stops shrinking (as in sort.py).
        shrink = (x[:, 6] + x[:, 2]) <= 0
        if shrink.any():
            x[shrink, 6] = 0.0
        x[:, :3] += x[:, 4:7]
        # P <- F P F' + Q, with F = I + (velocity -> position shift): two slice adds.
        P[:, :3, :] += P[:, 4:7, :]
        P[:, :, :3] += P[:, :, 4:7]
        P[:, self._diag, self._diag] += self.q
        return x, P

    def update(
        self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return _gain_update(x, P, xyxy_to_xysr(boxes), self.r)

    def to_xyxy(self, x: np.ndarray) -> np.ndarray:
        return xysr_to_xyxy(x[:, :4])

    def valid(self, x: np.ndarray) -> np.ndarray:
        """States that still describe a box; SORT forgets a track whose area collapsed."""
        return x[:, 2] * x[:, 3] > 0

    def replay(self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`replay` for one track, on plain floats.

        The covariance is block diagonal (centre x, centre y and area each with its velocity, the
        ratio alone: see :func:`_gain_update`), so each block is a 2x2 (or 1x1) filter of its own
        and a step is a few dozen float operations instead of a dozen numpy calls on 1-row
        arrays. OC-SORT's re-update runs through whole occlusions this way, often 30 steps.
        """
        z = xyxy_to_xysr(np.asarray(boxes, dtype=np.float64)).tolist()
        xs = x.tolist()
        q, r = self.q.tolist(), self.r.tolist()
        # per velocity block i (position i, velocity i + 4): p00, p01, p11
        blocks = [[P[i, i], P[i, i + 4], P[i + 4, i + 4]] for i in range(3)]
        p_ratio = P[3, 3]
        for zk in z:
            if xs[6] + xs[2] <= 0:  # predict, as predict() does
                xs[6] = 0.0
            for i in range(3):
                b = blocks[i]
                xs[i] += xs[i + 4]
                b[0] += 2.0 * b[1] + b[2] + q[i]
                b[1] += b[2]
                b[2] += q[i + 4]
            p_ratio += q[3]
            for i in range(3):  # update
                b = blocks[i]
                s = b[0] + r[i]
                k0, k1 = b[0] / s, b[1] / s
                y = zk[i] - xs[i]
                xs[i] += k0 * y
                xs[i + 4] += k1 * y
                b[2] -= k1 * b[1]
                b[0] -= k0 * b[0]
                b[1] -= k0 * b[1]
            k = p_ratio / (p_ratio + r[3])
            xs[3] += k * (zk[3] - xs[3])
            p_ratio -= k * p_ratio
        x_out = np.array(xs)
        P_out = np.zeros_like(P)
        for i, (p00, p01, p11) in enumerate(blocks):
            P_out[i, i], P_out[i, i + 4], P_out[i + 4, i], P_out[i + 4, i + 4] = p00, p01, p01, p11
        P_out[3, 3] = p_ratio
        return x_out, P_out


class XyahMotion:
    """DeepSORT's filter: centre, aspect ratio and height, noise proportional to height.

    Uncertainty that scales with the object's size keeps the chi-square gate equally strict for
    a pedestrian near the camera and one far away.
    """

    dim = 8
    std_position = 1.0 / 20.0
    std_velocity = 1.0 / 160.0

    def __init__(self) -> None:
        self._diag = np.arange(self.dim)

    def initiate(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = xyxy_to_xyah(boxes)
        n = len(z)
        x = np.zeros((n, self.dim))
        x[:, :4] = z
        h = z[:, 3:4]
        sp, sv = self.std_position, self.std_velocity
        std = np.concatenate(
            [2 * sp * h, 2 * sp * h, np.full_like(h, 1e-2), 2 * sp * h,
             10 * sv * h, 10 * sv * h, np.full_like(h, 1e-5), 10 * sv * h],
            axis=1,
        )
        P = np.zeros((n, self.dim, self.dim))
        P[:, self._diag, self._diag] = std**2
        return x, P

    def _process_noise(self, x: np.ndarray) -> np.ndarray:
        h = x[:, 3:4]
        sp, sv = self.std_position, self.std_velocity
        return np.concatenate(
            [sp * h, sp * h, np.full_like(h, 1e-2), sp * h,
             sv * h, sv * h, np.full_like(h, 1e-5), sv * h],
            axis=1,
        ) ** 2

    def _measurement_noise(self, x: np.ndarray) -> np.ndarray:
        """Diagonal of R per track: (N, 4)."""
        h = x[:, 3]
        sp = self.std_position * h
        return np.stack([sp, sp, np.full_like(h, 1e-1), sp], axis=1) ** 2

    def predict(self, x: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = self._process_noise(x)
        x[:, :4] += x[:, 4:8]
        P[:, :4, :] += P[:, 4:8, :]
        P[:, :, :4] += P[:, :, 4:8]
        P[:, self._diag, self._diag] += q
        return x, P

    def update(
        self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return _gain_update(x, P, xyxy_to_xyah(boxes), self._measurement_noise(x))

    def to_xyxy(self, x: np.ndarray) -> np.ndarray:
        return xyah_to_xyxy(x[:, :4])

    def valid(self, x: np.ndarray) -> np.ndarray:
        return (x[:, 2] > 0) & (x[:, 3] > 0)

    def gating_distance(self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (tracks x boxes) in measurement space.

        Compare with :data:`association.CHI2_95` ``[4]`` to reject pairs that the motion model
        finds implausible at the 95 % level, whatever the appearance says.
        """
        if len(x) == 0 or len(boxes) == 0:
            return np.zeros((len(x), len(boxes)))
        s = np.diagonal(P, axis1=1, axis2=2)[:, :4] + self._measurement_noise(x)  # diag(S)
        d = xyxy_to_xyah(boxes)[None, :, :] - x[:, None, :4]  # (N, M, 4)
        return np.einsum("nmi,ni->nm", d * d, 1.0 / s)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(N,4) corners -> (N,4) centre, width, height."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2.0, boxes[:, 1] + h / 2.0, w, h], axis=1)


def xywh_to_xyxy(z: np.ndarray) -> np.ndarray:
    half_w, half_h = z[:, 2] / 2.0, z[:, 3] / 2.0
    return np.stack([z[:, 0] - half_w, z[:, 1] - half_h, z[:, 0] + half_w, z[:, 1] + half_h], axis=1)


class XywhMotion:
    """BoT-SORT's filter (Aharon et al. 2022): centre, width and height, each with its own
    velocity, noise proportional to width (x, w) and height (y, h).

    Estimating width directly rather than through a near-constant aspect ratio follows a
    pedestrian's changing silhouette, which gives tighter boxes than DeepSORT's ``xyah``.
    """

    dim = 8
    std_position = 1.0 / 20.0
    std_velocity = 1.0 / 160.0

    def __init__(self) -> None:
        self._diag = np.arange(self.dim)

    def _wh(self, z: np.ndarray) -> np.ndarray:
        w, h = z[:, 2:3], z[:, 3:4]
        return np.concatenate([w, h, w, h], axis=1)

    def initiate(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = xyxy_to_xywh(boxes)
        n = len(z)
        x = np.zeros((n, self.dim))
        x[:, :4] = z
        wh = self._wh(z)
        std = np.concatenate([2 * self.std_position * wh, 10 * self.std_velocity * wh], axis=1)
        P = np.zeros((n, self.dim, self.dim))
        P[:, self._diag, self._diag] = std**2
        return x, P

    def predict(self, x: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wh = self._wh(x)
        q = np.concatenate([self.std_position * wh, self.std_velocity * wh], axis=1) ** 2
        x[:, :4] += x[:, 4:8]
        P[:, :4, :] += P[:, 4:8, :]
        P[:, :, :4] += P[:, :, 4:8]
        P[:, self._diag, self._diag] += q
        return x, P

    def _measurement_noise(self, x: np.ndarray) -> np.ndarray:
        """Diagonal of R per track: (N, 4)."""
        return (self.std_position * self._wh(x)) ** 2

    def update(
        self, x: np.ndarray, P: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        return _gain_update(x, P, xyxy_to_xywh(boxes), self._measurement_noise(x))

    def to_xyxy(self, x: np.ndarray) -> np.ndarray:
        return xywh_to_xyxy(x[:, :4])

    def valid(self, x: np.ndarray) -> np.ndarray:
        return (x[:, 2] > 0) & (x[:, 3] > 0)


def replay(motion: BoxMotion, x: np.ndarray, P: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One track's filter (``x`` (dim,), ``P`` (dim, dim)) predicted and updated with each of
    ``boxes`` (T, 4) in turn; new arrays, the inputs are left alone.

    Uses the model's own ``replay`` where it has a faster one (:meth:`SortMotion.replay`).
    """
    own = getattr(motion, "replay", None)
    if own is not None:
        return own(x, P, boxes)
    xs, Ps = x[None].copy(), P[None].copy()
    for box in np.asarray(boxes, dtype=np.float64):
        motion.predict(xs, Ps)
        xs, Ps = motion.update(xs, Ps, box[None])
    return xs[0], Ps[0]
