"""Image corruptions at three severities: what a camera does to the images a detector sees.

The set follows ImageNet-C (Hendrycks & Dietterich, ICLR 2019) and its detection counterpart
(Michaelis et al., "Benchmarking Robustness in Object Detection", 2019): gaussian noise, motion
blur, brightness, contrast, JPEG compression, fog and pixelation (here: downscaling), plus
occluding patches. Six are albumentations transforms; contrast and fog are a few lines of numpy
(`_contrast`, `_fog` say why). Where one of their parameters maps onto ours, their severities
1, 3 and 5 are our 1, 2 and 3, so a severity means what it means there. Sizes (motion-blur
length, patches, fog) are fractions of the image: a severity means the same at 256 and 1280 px.

The transforms are albumentations 2.0.8 (MIT; the releases after it are AlbumentationsX, under
the AGPL). `imagecorruptions` (Apache-2.0), the detection benchmark's own package, is not used:
its last release (1.1.2, 2020) imports `pkg_resources`, draws from numpy's global random state
(no per-image seed), calls scikit-image's `gaussian(multichannel=...)` (deprecated in 0.19,
gone since) and has no occlusion.

Every corruption is deterministic per (image, corruption, severity): the random draws (noise,
blur angle, patch positions, fog) come from a seed hashed from the image's name and the
corruption, so the same suite run twice scores the same images, and a higher severity is the
same draw, stronger. None of them moves image content: the motion-blur kernel
is centred (albumentations' `allow_shifted` would translate the image), downscaling comes back
to the original size, and patches cover objects without changing their boxes, so the labels
stay valid as they are.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from control_plane.errors import ControlPlaneError

SEVERITIES = (1, 2, 3)


class UnknownCorruption(ControlPlaneError):
    """A corruption name or severity the suite does not have."""

    code = "unknown_corruption"


@dataclass(frozen=True)
class Corruption:
    """One corruption: its parameter at severity 1, 2 and 3, and how it is applied."""

    name: str
    description: str
    levels: tuple
    apply: Callable[[np.ndarray, object, int], np.ndarray]  # (image, parameter, seed) -> image


def _albumentations():
    # albumentations asks PyPI for a newer version at import unless told not to.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def _albu(build: Callable) -> Callable[[np.ndarray, object, int], np.ndarray]:
    """An albumentations transform, `build(albumentations, parameter, height, width)`, run with
    its own seeded random state (Compose's `seed`; the global ones are untouched)."""

    def apply(image: np.ndarray, level, seed: int) -> np.ndarray:
        A = _albumentations()
        transform = A.Compose([build(A, level, *image.shape[:2])], seed=seed)
        return transform(image=image)["image"]

    return apply


def _odd(n: float) -> int:
    k = max(3, int(round(n)))
    return k if k % 2 else k + 1


def _contrast(image: np.ndarray, factor: float, _seed: int) -> np.ndarray:
    """ImageNet-C's contrast: each channel pulled towards its mean. (albumentations 2.0.8's
    RandomBrightnessContrast documents this but multiplies by the factor, which darkens.)"""
    x = image.astype(np.float32)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * factor + mean, 0, 255).astype(np.uint8)


def _haze(h: int, w: int, rng: np.random.Generator, decay: float = 2.0) -> np.ndarray:
    """Fractal value noise in [0, 1]: octaves of random grids, each twice as fine and `decay`
    times weaker than the one before, upsampled bicubically (ImageNet-C draws its fog with the
    diamond-square plasma fractal, whose spectrum falls off the same way)."""
    haze = np.zeros((h, w), np.float32)
    cells, amplitude = 2, 1.0
    while cells <= max(h, w) // 2:
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        haze += amplitude * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        cells, amplitude = cells * 2, amplitude / decay
    haze -= haze.min()
    return haze / max(float(haze.max()), 1e-6)


def _fog(image: np.ndarray, density: float, seed: int) -> np.ndarray:
    """Koschmieder's model of light through fog, I = J t + A (1 - t), with transmission
    t = exp(-density (0.3 + haze)) patchy by the fractal haze and a light-gray airlight A.
    (ImageNet-C's fog adds the haze and compresses the range, which darkens the clear parts;
    albumentations' RandomFog draws hundreds of circles, 0.3-0.5 s an image at 256 px.)"""
    t = np.exp(-density * (0.3 + _haze(*image.shape[:2], np.random.default_rng(seed))))
    out = image.astype(np.float32) * t[..., None] + 220.0 * (1.0 - t[..., None])
    return np.clip(out, 0, 255).astype(np.uint8)


# Parameters at severity 1, 2, 3. ImageNet-C's at its severities 1, 3, 5 where noted.
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption(
        "gaussian_noise", "additive gaussian noise, std as a fraction of 255 (ImageNet-C)",
        (0.08, 0.18, 0.38),
        _albu(lambda A, std, h, w: A.GaussNoise(std_range=(std, std), mean_range=(0.0, 0.0),
                                                per_channel=True, noise_scale_factor=1,
                                                p=1.0))),
    Corruption(
        "motion_blur", "linear motion blur at a random angle, length as a fraction of the "
                       "shorter side",
        (0.03, 0.06, 0.12),
        _albu(lambda A, length, h, w: A.MotionBlur(
            blur_limit=(_odd(length * min(h, w)),) * 2, allow_shifted=False,
            angle_range=(0, 360), direction_range=(0.0, 0.0), p=1.0))),
    Corruption(
        "brightness", "brighter by a fraction of 255, clipped (ImageNet-C: +0.1, +0.3, +0.5 "
                      "in HSV value)",
        (0.1, 0.3, 0.5),
        _albu(lambda A, beta, h, w: A.RandomBrightnessContrast(
            brightness_limit=(beta, beta), contrast_limit=(0.0, 0.0), brightness_by_max=True,
            p=1.0))),
    Corruption(
        "contrast", "contrast scaled around each channel's mean by this factor (ImageNet-C)",
        (0.4, 0.2, 0.05), _contrast),
    Corruption(
        "jpeg", "JPEG compression at this quality (ImageNet-C)",
        (25, 15, 7),
        _albu(lambda A, quality, h, w: A.ImageCompression(
            compression_type="jpeg", quality_range=(quality, quality), p=1.0))),
    Corruption(
        "fog", "fog density: transmission exp(-density (0.3 + fractal haze in [0, 1]))",
        (0.6, 1.2, 2.0), _fog),
    Corruption(
        "occlusion", "(patches, side as a fraction of the image's): gray patches at random "
                     "places, about 4, 12 and 27 % of the area",
        ((4, 0.10), (8, 0.125), (12, 0.15)),
        _albu(lambda A, spec, h, w: A.CoarseDropout(
            num_holes_range=(spec[0], spec[0]), hole_height_range=(spec[1], spec[1]),
            hole_width_range=(spec[1], spec[1]), fill=114, p=1.0))),
    Corruption(
        "downscale", "down to this fraction of the size (area) and back up (bilinear); "
                     "ImageNet-C's pixelate: 0.6, 0.4, 0.25",
        (0.6, 0.4, 0.25),
        _albu(lambda A, scale, h, w: A.Downscale(
            scale_range=(scale, scale),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=1.0))),
)}


def check(corruptions: list[str] | tuple[str, ...] | None = None,
          severities: list[int] | tuple[int, ...] | None = None
          ) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The names and severities asked for (None: all), refused with the known ones if any is
    not: `UnknownCorruption`."""
    names = tuple(corruptions) if corruptions else tuple(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise UnknownCorruption(f"unknown corruption {', '.join(map(repr, unknown))}; known: "
                                f"{', '.join(CORRUPTIONS)}", unknown=unknown,
                                known=list(CORRUPTIONS))
    levels = tuple(severities) if severities else SEVERITIES
    bad = [s for s in levels if s not in SEVERITIES]
    if bad:
        raise UnknownCorruption(f"severity {', '.join(map(str, bad))} does not exist; "
                                f"severities are {', '.join(map(str, SEVERITIES))}")
    return tuple(dict.fromkeys(names)), tuple(sorted(set(levels)))


def seed_for(key: str, corruption: str) -> int:
    """The random seed of an image's corruption, stable across runs and machines. The same at
    every severity: the same noise, angle, patches and haze, stronger."""
    digest = hashlib.sha256(f"{key}\0{corruption}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def corrupt(image: np.ndarray, corruption: str, severity: int, *, key: str) -> np.ndarray:
    """`image` (HxWx3 uint8, BGR or RGB) under `corruption` at `severity` (1-3), the same for the
    same `key` (the image's name) every time; same size and dtype, content not moved."""
    check([corruption], [severity])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    spec = CORRUPTIONS[corruption]
    return spec.apply(image, spec.levels[severity - 1], seed_for(key, corruption))
