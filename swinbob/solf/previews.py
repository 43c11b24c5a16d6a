"""The audit trail: one PNG per rejected organ and per organ of a repaired swap, so that SOLF's
decisions can be checked by eye.

``report/previews/{case}__{label:03d}_{name}.png`` shows two planes through the organ's centroid
(axial and coronal, in radiological view: the subject's right on the left of the picture, anterior
and superior at the top, pixels scaled to the voxel spacing). The background is the scan's first
image channel when ``--image_dir`` is given, otherwise the label map itself in shades of grey; the
organ is drawn in red over it (as labelled in the input) and its left/right partner, if it has one, in blue (so a
swapped pair shows at a glance). The title names the case, the organ and the reasons (ours
and the paper's, kept apart). At most ``--max_previews`` are drawn (0: none), the first ones in
case order; previews of organs no longer rejected or swapped are removed, so the folder always
matches the decisions. matplotlib is optional, as for the report figure.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import numpy as np

from swinbob.files import NiftiError, atomic_write, read_nifti, short_name
from swinbob.labels import side_pairs
from swinbob.solf.decide import REJECTED, Decisions
from swinbob.solf.labelsets import name_of
from swinbob.solf.store import FeatureTable
from swinbob.solf.structures import read_label_source, structure_ids
from swinbob.viz import ras_spacing, to_ras

log = logging.getLogger(__name__)


def preview_name(case_id: str, label: int, name: str) -> str:
    """File name of one preview (characters that are unsafe in file names become ``_``; a long organ or
    case name is shortened with a stable hash of the full name, :func:`~swinbob.files.short_name`)."""
    return short_name(re.sub(r"[^A-Za-z0-9._-]", "_", f"{case_id}__{label:03d}_{name}"), ".png")


def preview_rows(decisions: Decisions, limit: int) -> list[int]:
    """The first ``limit`` rows in (case, label) order that are rejected or repaired swaps."""
    shown = decisions.decision == REJECTED
    if decisions.swapped is not None:
        shown = shown | decisions.swapped
    return np.flatnonzero(shown)[: max(0, limit)].tolist()


def centre_index(mask: np.ndarray) -> np.ndarray:
    """Voxel index of the organ's centroid, moved to the nearest organ voxel (so that a split or
    hollow organ is still cut through some of its voxels)."""
    voxels = np.argwhere(mask)
    centroid = voxels.mean(axis=0)
    return voxels[np.argmin(((voxels - centroid) ** 2).sum(axis=1))]


def _planes(volume: np.ndarray, index: np.ndarray) -> list[np.ndarray]:
    """Axial and coronal planes through ``index`` of a RAS volume, in radiological display order."""
    return [np.flip(volume[:, :, index[2]].T, axis=(0, 1)), np.flip(volume[:, index[1], :].T, axis=(0, 1))]


def draw_preview(path: Path, label: np.ndarray, image: np.ndarray | None, affine: np.ndarray, organ: int,
                 title: str, partner: int | None = None) -> None:
    """Write the PNG of one organ (red; ``partner`` blue) of one scan (volumes on the grid of ``affine``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_ras = to_ras(label, affine)
    background = to_ras(image, affine) if image is not None else np.where(label_ras > 0, 0.3 + 0.5 * (label_ras % 7) / 6, 0)
    spacing = ras_spacing(affine)
    mask = label_ras == organ
    index = centre_index(mask)
    other = label_ras == partner if partner is not None else np.zeros_like(mask)
    colours = matplotlib.colors.ListedColormap(["blue", "red"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 5))
    low, high = np.percentile(background, (0.5, 99.5))
    aspects = (spacing[1] / spacing[0], spacing[2] / spacing[0])
    overlay = np.where(mask, 2, np.where(other, 1, 0))  # 2 = the organ, 1 = its partner
    for ax, back, plane, aspect, view in zip(axes, _planes(background, index), _planes(overlay, index), aspects,
                                             ("axial", "coronal")):
        ax.imshow(back, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect, interpolation="nearest")
        ax.imshow(np.ma.masked_where(plane == 0, plane), cmap=colours, alpha=0.55, aspect=aspect,
                  interpolation="nearest", vmin=1, vmax=2)
        ax.set_title(f"{view}, voxel {tuple(int(i) for i in index)} (RAS)", fontsize=8)
        ax.set_xlabel("R  <->  L", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, metadata={"Software": None})
    plt.close(fig)


def write_previews(folder: Path, table: FeatureTable, decisions: Decisions, label_paths: dict[str, str],
                   image_paths: dict[str, tuple[str, ...]], limit: int) -> int:
    """Draw the previews of the first ``limit`` rejected organs; remove stale ones; return how many."""
    rows = preview_rows(decisions, limit)
    if rows and importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed; skipping the previews of rejected organs (pip install matplotlib)")
        return 0
    cols, labels = table.columns, decisions.rules.labels
    structures = structure_ids(labels)
    partners = {a: b for pair in side_pairs(labels) for a, b in (pair, pair[::-1])}
    wanted: dict[str, list[int]] = {}
    for row in rows:
        wanted.setdefault(table.case_ids[int(cols["case_index"][row])], []).append(row)
    written: set[str] = set()
    for case_id, case_rows in wanted.items():
        try:
            source = read_label_source(label_paths[case_id], structures)
            label, affine = source.data, source.affine
            channels = image_paths.get(case_id, ())
            image = read_nifti(channels[0], ndim=3)[0] if channels else None
        except (NiftiError, OSError) as exc:
            log.warning("no preview for %s: %s", case_id, exc)
            continue
        for row in case_rows:
            organ = int(cols["label"][row])
            name = name_of(labels, organ)
            ours, paper = decisions.reasons[row], decisions.paper_reasons[row]
            reasons = " | ".join(filter(None, (f"ours: {ours}" if ours else "", f"paper: {paper}" if paper else "")))
            partner = partners.get(organ)
            shown = f" (red; {name_of(labels, partner)} blue)" if partner is not None else " (red)"
            file_name = preview_name(case_id, organ, name)
            draw_preview(folder / file_name, label, image, affine, organ,
                         f"{case_id}: {name} ({organ}) rejected{shown}\n{reasons}", partner)
            written.add(file_name)
    if folder.is_dir():
        for stale in folder.glob("*.png"):
            if stale.name not in written:
                stale.unlink()
    return len(written)
