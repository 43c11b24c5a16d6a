"""Animated GIFs of predictions: image | prediction | ground truth | legend, one axial slice per frame.

Volumes are reoriented to RAS first (whatever the storage orientation), so a frame is always an
axial slice shown radiologically (anterior up, the subject's right on the viewer's left). Each
class keeps one fixed colour in every GIF of a run, and the legend lists the classes present in
the case. Pixels are repeated to keep the in-plane aspect ratio of anisotropic voxels, and panels
are enlarged by an integer factor to at least :data:`MIN_PANEL` pixels high so that the slice
number and the legend stay readable for small volumes.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from swinbob.files import atomic_write

LEGEND_WIDTH = 160
MIN_PANEL = 128
ALPHA = 0.5
_ROW = 14
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)


@dataclass(frozen=True)
class GifSettings:
    """``--gif_frames`` (axial slices sampled evenly), ``--gif_downsample`` (spatial stride) and
    ``--gif_duration`` (seconds per frame)."""

    frames: int = 60
    downsample: int = 1
    duration: float = 0.2

    def __post_init__(self) -> None:
        if self.frames < 1 or self.downsample < 1 or not self.duration > 0:
            raise ValueError(f"GIF settings must be positive, got {self}")


def class_colour(label: int) -> tuple[int, int, int]:
    """The fixed RGB colour of a class ID (a 20-colour palette, then golden-ratio hues)."""
    if 1 <= label <= len(_PALETTE):
        return _PALETTE[label - 1]
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` (X, Y, Z) with its axes permuted and flipped to RAS."""
    orientation = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(volume, orientation)


def ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the R, A and S axes of the volume returned by :func:`to_ras`."""
    orientation = nib.orientations.io_orientation(affine)
    sizes = nib.affines.voxel_sizes(affine)
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(orientation):
        spacing[int(target)] = float(sizes[axis])
    return spacing[0], spacing[1], spacing[2]


def slice_indices(depth: int, frames: int) -> np.ndarray:
    """``min(frames, depth)`` distinct axial indices spread evenly from the first to the last slice."""
    count = min(frames, depth)
    return np.unique(np.linspace(0, depth - 1, count).round().astype(int)) if count > 1 else np.array([depth // 2])


def _repeats(volume_shape: Sequence[int], downsample: int, spacing: Sequence[float]) -> tuple[int, int]:
    """Pixel repeats (rows, columns) for the in-plane aspect ratio and the minimum panel height."""
    ratio = spacing[1] / spacing[0]
    rows, cols = (min(round(ratio), 4), 1) if ratio >= 1 else (1, min(round(1 / ratio), 4))
    scale = max(1, math.ceil(MIN_PANEL / (math.ceil(volume_shape[1] / downsample) * rows)))
    return rows * scale, cols * scale


def panel_shape(volume_shape: Sequence[int], downsample: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> tuple[int, int]:
    """Height and width in pixels of one panel for a RAS volume of ``volume_shape`` and ``spacing``."""
    rows, cols = _repeats(volume_shape, downsample, spacing)
    return math.ceil(volume_shape[1] / downsample) * rows, math.ceil(volume_shape[0] / downsample) * cols


def _display(plane: np.ndarray, repeats: tuple[int, int]) -> np.ndarray:
    """An (X, Y) plane as rows = anterior→posterior, columns = subject's right→left, enlarged."""
    shown = np.flip(plane.T, axis=(0, 1))
    return np.repeat(np.repeat(shown, repeats[0], axis=0), repeats[1], axis=1)


def _grey(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (0.5, 99.5))
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    return (scaled * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    if labels is not None:
        for label in np.unique(labels):
            if label > 0:
                mask = labels == label
                rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * np.asarray(class_colour(int(label)), np.float32)
    return rgb.astype(np.uint8)


def _legend(height: int, classes: Sequence[int], names: Mapping[int, str]) -> np.ndarray:
    panel = Image.new("RGB", (LEGEND_WIDTH, height), (0, 0, 0))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    rows = max(1, (height - 4) // _ROW)
    shown = list(classes) if len(classes) <= rows else list(classes)[: rows - 1]
    for row, label in enumerate(shown):
        top = 2 + row * _ROW
        draw.rectangle([4, top + 1, 14, top + 11], fill=class_colour(label))
        draw.text((18, top), f"{label} {names.get(label, '')}"[:24], fill=(255, 255, 255), font=font)
    if len(shown) < len(classes):
        draw.text((18, 2 + len(shown) * _ROW), f"+{len(classes) - len(shown)} more", fill=(200, 200, 200), font=font)
    return np.asarray(panel)


def _caption(frame: np.ndarray, texts: Sequence[tuple[int, str]]) -> np.ndarray:
    picture = Image.fromarray(frame)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for x, text in texts:
        draw.text((x + 3, 2), text, fill=(255, 255, 0), font=font)
    return np.asarray(picture)


def render_frames(
    image: np.ndarray,
    prediction: np.ndarray,
    label: np.ndarray | None,
    names: Mapping[int, str],
    settings: GifSettings,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> list[np.ndarray]:
    """RGB frames (H, W, 3) for RAS volumes (X, Y, Z): image, prediction and, if given, ground truth."""
    step = settings.downsample
    height, width = panel_shape(image.shape, step, spacing)
    repeats = _repeats(image.shape, step, spacing)
    volumes = [prediction] + ([label] if label is not None else [])
    present = sorted({int(v) for vol in volumes for v in np.unique(vol) if v > 0 and v != 255})
    legend = _legend(height, present, names)
    grey = _grey(image.astype(np.float32))
    titles = ["prediction"] + (["ground truth"] if label is not None else [])  # the image panel shows the slice
    frames = []
    depth = image.shape[2]
    for z in slice_indices(depth, settings.frames):
        plane = _display(grey[::step, ::step, z], repeats)
        panels = [_overlay(plane, None)]
        panels += [_overlay(plane, _display(vol[::step, ::step, z], repeats)) for vol in volumes]
        frame = np.concatenate(panels + [legend], axis=1)
        texts = [(0, f"slice {z}/{depth - 1}")] + [((i + 1) * width, title) for i, title in enumerate(titles)]
        frames.append(_caption(frame, texts))
    return frames


def write_gif(
    path: str | os.PathLike,
    image: np.ndarray,
    prediction: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    names: Mapping[int, str],
    settings: GifSettings,
) -> Path:
    """Write the GIF of one case atomically; volumes are on the input grid described by ``affine``."""
    ras = [to_ras(np.asarray(v), affine) if v is not None else None for v in (image, prediction, label)]
    frames = render_frames(ras[0], ras[1], ras[2], names, settings, ras_spacing(affine))
    with atomic_write(path, suffix=".gif") as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(round(settings.duration * 1000)), loop=0)
    return Path(path)
