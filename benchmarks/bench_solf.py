"""Benchmark SOLF pass 1 against the upstream-style per-organ full-volume loop.

Builds one whole-body label volume of 224×174×370 voxels (the UKBOB Dixon grid) holding all 72
TotalVibeSegmentator labels plus four Dixon channels: a phantom generated at half resolution and
upsampled ×2 (nearest), with the labels the phantom lacks added as blobs inside the body. Then it
times, in one run, :func:`swinbob.solf.features.measure_organs` (one bincount, one
``find_objects``, per-organ work inside bounding boxes) and a naive reference written here
(for every label: a full-volume mask, ``ndimage.label`` over the full volume, full-volume surface,
moments and intensities), checks that both give the same features, and prints the speed-up.

It also times, best of ``--repeats`` (wall clock and this process's CPU time, which a machine
shared with other jobs inflates less): pass 1 on the labels alone (the 72 labels, no images), and
end to end from files: the label map (uint8) and the four channels (int16, as scanners store
them) written as ``.nii.gz`` to a temporary folder, then :func:`swinbob.solf.cases.measure_case`
(decompress, convert, validate, measure) as a pool worker runs it.

    python benchmarks/bench_solf.py [--repeats 3] [--scale 2]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob.files import write_nifti  # noqa: E402
from swinbob.labels import TOTALVIBE_LABELS, ids_by_name  # noqa: E402
from swinbob.data.phantoms import ukbob_case  # noqa: E402
from swinbob.solf.cases import make_task, measure_case  # noqa: E402
from swinbob.solf.outputs import CleanTask, clean_case  # noqa: E402
from swinbob.solf.features import CONNECTIVITY, MAIN_GEOMETRY, SHAPE_COLUMNS, face_areas, measure_organs  # noqa: E402

HALF_SHAPE = (112, 87, 185)
CHANNELS = ("fat", "in_phase", "opposed_phase", "water")


def synthetic_volume(seed: int = 0, scale: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, images (4, X, Y, Z), affine) of a whole-body volume with all labels 1..72."""
    case = ukbob_case(0, seed=seed, shape=HALF_SHAPE)
    label = case.label
    images = case.image
    for axis in range(3):
        label = np.repeat(label, scale, axis=axis)
        images = np.repeat(images, scale, axis=axis + 1)
    affine = case.affine.copy()
    affine[:3, :3] /= scale
    rng = np.random.default_rng(seed)
    names = ids_by_name(TOTALVIBE_LABELS)
    soft = np.isin(label, [names["inner_fat"], names["muscle"]])
    candidates = np.argwhere(soft[::4, ::4, ::4]) * 4
    missing = [i for i in TOTALVIBE_LABELS if i and not np.any(label == i)]
    for organ in missing:
        pieces = 12 if TOTALVIBE_LABELS[organ] == "costal_cartilages" else 1
        for centre in candidates[rng.choice(len(candidates), pieces, replace=False)]:
            radii = rng.uniform(3, 9, 3) if pieces == 1 else rng.uniform(2, 4, 3)
            box = tuple(slice(max(0, int(c - r)), int(c + r) + 1) for c, r in zip(centre, radii))
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(np.ogrid[box], centre, radii)) <= 1
            region = label[box]
            region[inside & soft[box]] = organ
    return label, images, affine


def _naive_geometry(mask: np.ndarray, affine: np.ndarray, areas: np.ndarray) -> dict[str, float]:
    """Surface (padded full-volume face count), shape and centroid from the full voxel list."""
    linear = affine[:3, :3]
    padded = np.pad(mask, 1).astype(np.int8)
    surface = float(np.dot([np.count_nonzero(np.diff(padded, axis=a)) for a in range(3)], areas))
    coords = np.argwhere(mask).astype(np.float64)
    cov = np.cov(coords.T, bias=True) + np.eye(3) / 12
    eigen = np.clip(np.linalg.eigvalsh(linear @ cov @ linear.T), 0, None)
    volume = len(coords) * abs(np.linalg.det(linear))
    centroid = linear @ coords.mean(axis=0) + affine[:3, 3]
    return {"surface_mm2": surface, "sphericity": math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / surface,
            "eccentricity": math.sqrt(max(0.0, 1 - eigen[0] / eigen[2])),
            "major_axis_mm": 2 * math.sqrt(5 * eigen[2]), "minor_axis_mm": 2 * math.sqrt(5 * eigen[0]),
            "centroid_x": centroid[0], "centroid_y": centroid[1], "centroid_z": centroid[2]}


def naive_features(label: np.ndarray, affine: np.ndarray, images: np.ndarray) -> dict[str, list]:
    """Reference: one full-volume mask, labelling and surface pass per label (DESIGN.md §7)."""
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    areas = face_areas(spacing)
    out: dict[str, list] = {"label": []}
    for organ in range(1, max(TOTALVIBE_LABELS) + 1):
        mask = label == organ
        count = int(mask.sum())
        if count == 0:
            continue
        components, n = ndimage.label(mask, structure=CONNECTIVITY)
        sizes = np.bincount(components.ravel())[1:]
        coords = np.argwhere(mask).astype(np.float64)
        low, high = coords.min(axis=0).astype(int), coords.max(axis=0).astype(int) + 1
        row = {
            "voxel_count": count, "volume_mm3": count * abs(np.linalg.det(linear)),
            **_naive_geometry(mask, affine, areas),
            "n_components": n, "largest_share": sizes.max() / count,
            "bbox_min_i": low[0], "bbox_min_j": low[1], "bbox_min_k": low[2],
            "bbox_max_i": high[0], "bbox_max_j": high[1], "bbox_max_k": high[2],
            "touches_border": int(np.any(low == 0) or np.any(high == label.shape)),
        }
        largest = mask if n == 1 else components == int(np.argmax(sizes)) + 1
        row.update({f"main_{k}": v for k, v in _naive_geometry(largest, affine, areas).items() if k in MAIN_GEOMETRY})
        for name, channel in zip(CHANNELS, images):
            values = channel[mask].astype(np.float64)
            row[f"mean_{name}"], row[f"std_{name}"] = values.mean(), values.std()
        out["label"].append(organ)
        for key, value in row.items():
            out.setdefault(key, []).append(value)
    return out


def assert_same(ours: dict[str, list], reference: dict[str, list]) -> None:
    """Both implementations must agree on every organ and feature."""
    assert ours["label"] == reference["label"], "different organs found"
    for key in [*SHAPE_COLUMNS, *(f"{s}_{c}" for c in CHANNELS for s in ("mean", "std"))]:
        if not np.allclose(ours[key], reference[key], rtol=1e-6, atol=1e-6):
            raise AssertionError(f"feature {key} differs between SOLF and the reference")


def cpu_info() -> str:
    """One line describing the CPU and the numerical libraries."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{model}, {cpus} usable cores; Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__} (single process, both paths)")


def best_of(function: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Lowest wall-clock and lowest CPU seconds of ``repeats`` calls."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def end_to_end(label: np.ndarray, images: np.ndarray, affine: np.ndarray, repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall/CPU seconds of ``measure_case`` on the volume written as .nii.gz files, and of
    ``clean_case`` (read, clean one rejected organ and the fragments of another, write .nii.gz)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_nifti(root / "labels" / "case.nii.gz", label, affine)
        for name, channel in zip(CHANNELS, images):
            write_nifti(root / "images" / f"case_{name}.nii.gz", np.round(channel).astype(np.int16), affine)
        names = {p.name for p in (root / "images").iterdir()}
        task = make_task("case", root / "labels" / "case.nii.gz", root / "images", names, CHANNELS)
        assert measure_case(task)["status"] == "ok"
        cleaning = CleanTask("case", str(root / "labels" / "case.nii.gz"), str(root / "out" / "case.nii.gz"), (5,), {1: 1})
        return {"measure_case": best_of(lambda: measure_case(task), repeats),
                "clean_case": best_of(lambda: clean_case(cleaning), repeats)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 if the features differ or the speed-up is below ``--target``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the SOLF path (best is reported)")
    parser.add_argument("--scale", type=int, default=2, help="upsampling of the 112×87×185 phantom")
    parser.add_argument("--target", type=float, default=10.0, help="required speed-up")
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("device:", cpu_info())
    label, images, affine = synthetic_volume(scale=args.scale)
    organs = np.unique(label)
    print(f"volume: {label.shape} = {label.size / 1e6:.1f} M voxels, {np.count_nonzero(organs)} labels, 4 channels")
    start = time.perf_counter()
    reference = naive_features(label, affine, images)
    naive_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = measure_organs(label, affine, images, CHANNELS)
        times.append(time.perf_counter() - start)
    assert_same(ours, reference)
    best = min(times)
    print(f"naive per-organ loop: {naive_s:.2f} s")
    print(f"SOLF pass 1:          {best:.2f} s (best of {args.repeats}: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"features equal: yes; speed-up: {naive_s / best:.1f}x (target {args.target:g}x)")
    wall, cpu = best_of(lambda: measure_organs(label, affine), args.repeats)
    print(f"pass 1, labels only (72 labels, in memory): {wall:.3f} s wall, {cpu:.3f} s CPU (best of {args.repeats})")
    wall, cpu = best_of(lambda: measure_organs(label, affine, images, CHANNELS), args.repeats)
    print(f"pass 1, labels + 4 channels (in memory):    {wall:.3f} s wall, {cpu:.3f} s CPU (best of {args.repeats})")
    for stage, (wall, cpu) in end_to_end(label, images, affine, args.repeats).items():
        print(f"end to end from .nii.gz, {stage} (labels + 4 int16 channels): {wall:.3f} s wall, {cpu:.3f} s CPU")
    return 0 if naive_s / best >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
