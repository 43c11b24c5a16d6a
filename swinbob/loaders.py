"""Datalist checking, datasets and data loaders for training and validation.

:func:`check_datalist` reads every file a datalist names before a run starts and lists *all*
problems at once (missing or unreadable files, image/label grids that disagree, channel counts,
label values the task cannot represent), so a multi-day UKBOB run never dies hours in on case
9,731. Evaluation reuses it for its test lists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.data.utils import json_hashing, set_rnd
from monai.utils import MAX_SEED
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from swinbob.data import case_name, check_finite, load_datalist
from swinbob.files import NiftiError, load_nifti_header, read_nifti
from swinbob.tasks import LabelValueError, Task

AFFINE_ATOL_MM = 1e-3
"""Image and label affines may differ by float32 rounding of the header, not by a real shift."""
AFFINE_RTOL = 1e-5


class DatalistError(ValueError):
    """A datalist that cannot be used; the message lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str = "datalist") -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s) found, nothing was trained:\n{listed}")


# ----------------------------------------------------------------------------------------------
# Datalists: loading and checking
# ----------------------------------------------------------------------------------------------

def load_splits(
    json_list: str | os.PathLike,
    data_dir: str | os.PathLike,
    fold: int | None = None,
    allow_absolute: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation entries of a Decathlon datalist (``fold`` selects BraTS folds).

    Any problem reading the list itself (not found, bad JSON, a path escaping ``data_dir``)
    becomes a :class:`DatalistError` so that the caller has one error type to report.
    """
    try:
        train = load_datalist(json_list, data_dir, "training", fold, allow_absolute)
        val = load_datalist(json_list, data_dir, "validation", fold, allow_absolute)
    except (OSError, ValueError) as exc:
        raise DatalistError([str(exc)], source=str(json_list)) from exc
    if not train:
        raise DatalistError(["the 'training' list is empty"], source=str(json_list))
    return train, val


def _as_list(paths: str | Sequence[str]) -> list[str]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _grid_problem(path: str, shape: tuple, affine: np.ndarray, ref: tuple[str, tuple, np.ndarray]) -> str | None:
    ref_path, ref_shape, ref_affine = ref
    if shape != ref_shape:
        return f"{path}: grid shape {shape} differs from {ref_shape} of {ref_path}"
    if not np.allclose(affine, ref_affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL_MM):
        delta = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
        return f"{path}: affine differs from that of {ref_path} (max difference {delta:.4g})"
    return None


def _image_grid(path: str, read_data: bool) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of one image file; with ``read_data`` its voxels are read and must be finite.

    Raises :class:`~swinbob.files.NiftiError` naming the file.
    """
    if not read_data:
        header = load_nifti_header(path)
        return tuple(int(s) for s in header.shape), np.asarray(header.affine)
    data, affine = read_nifti(path, ndim=None)
    check_finite(data, path)
    return tuple(int(s) for s in data.shape), affine


def entry_problems(entry: Mapping[str, Any], task: Task, require_label: bool = True, read_images: bool = True) -> list[str]:
    """Every problem of one datalist entry, as messages that name the file.

    Images are read in full (``read_images``: NaN/Inf voxels and truncated data are found now,
    not hours into training) or checked from their headers only (exists, readable, sane
    affine). Labels are always read in full because their values must be checked
    (``task.check_label_values``). All images and the label must share one grid (shape and affine).
    """
    problems: list[str] = []
    grids: list[tuple[str, tuple, np.ndarray]] = []
    channels: dict[str, int] = {}
    images = _as_list(entry["image"])
    for path in images:
        try:
            shape, affine = _image_grid(path, read_images)
        except NiftiError as exc:
            problems.append(str(exc))
            continue
        channels[str(path)] = shape[3] if len(shape) == 4 else 1
        grids.append((str(path), shape[:3], affine))
    count = sum(channels.values())
    if len(grids) == len(images) and count != task.in_channels:  # count only when all images opened
        per_file = ", ".join(f"{path} ({n})" for path, n in channels.items())
        problems.append(f"case {case_name(entry)}: {count} image channel(s), task {task.name!r} needs "
                        f"{task.in_channels}; channels per file: {per_file}")
    if "label" in entry:
        try:
            label, affine = read_nifti(entry["label"], ndim=3)
            grids.append((str(entry["label"]), tuple(label.shape), affine))
            task.check_label_values(label, str(entry["label"]))
        except (NiftiError, LabelValueError) as exc:
            problems.append(str(exc))
    elif require_label:
        problems.append(f"case {case_name(entry)}: entry has no 'label'")
    problems += [p for g in grids[1:] if (p := _grid_problem(*g, ref=grids[0]))]
    return problems


def check_datalist(
    entries: Sequence[Mapping[str, Any]], task: Task, require_label: bool = True, workers: int = 4, read_images: bool = True
) -> list[str]:
    """Problems of all ``entries`` (empty when usable), checked in parallel threads (see :func:`entry_problems`).

    Threads suffice: the work is file I/O and zlib, both of which release the GIL.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda e: entry_problems(e, task, require_label, read_images), entries)
        return [problem for problems in found for problem in problems]


# ----------------------------------------------------------------------------------------------
# Datasets and loaders
# ----------------------------------------------------------------------------------------------

def make_dataset(
    entries: Sequence[Mapping[str, Any]],
    transform: Any,
    cache_dir: str | os.PathLike | None = None,
    use_normal_dataset: bool = False,
    cache_rate: float = 1.0,
    workers: int = 0,
) -> Dataset:
    """In-memory ``CacheDataset`` (default), on-disk ``PersistentDataset`` or plain ``Dataset``.

    Caches hold the output of the deterministic preprocessing only; random augmentation runs
    on every access. The persistent cache key includes the transform chain, so changing e.g.
    the spacing never silently reuses stale volumes.
    """
    data = list(entries)
    if use_normal_dataset:
        return Dataset(data, transform)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=json_hashing)
    return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=max(1, workers), progress=False)


def shard(entries: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Every ``world_size``-th entry from ``rank``: each case on exactly one rank, no padding.

    ``DistributedSampler`` pads with duplicates to equal lengths, which would count some
    validation cases twice; validation needs each case exactly once.
    """
    return list(entries)[rank::world_size]


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's ``(sample_seed, index)`` pairs of one epoch, a pure function of (seed, epoch).

    The epoch's order is a permutation of all cases drawn from ``(seed, epoch)``, padded by
    repeating its start to a multiple of ``world_size`` (``DistributedSampler`` semantics, also
    for one process, so that ranks stay in step); rank ``r`` takes every ``world_size``-th slot
    from ``r``. Each slot also gets its own sample seed, so a case repeated by the padding is
    augmented differently. Nothing here reads a global random generator, hence a run draws the
    same samples whatever its worker count, and resumed at any epoch.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need at least one case and 0 <= rank < world_size, got {size}, {rank}, {world_size}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed % 2**64, self.epoch])
        total = len(self) * self.world_size
        order = np.resize(rng.permutation(self.size), total)  # np.resize repeats from the start
        seeds = rng.integers(0, MAX_SEED, size=total)
        for slot in range(self.rank, total, self.world_size):
            yield int(seeds[slot]), int(order[slot])


class SeededDataset(TorchDataset):
    """``dataset`` indexed by ``(sample_seed, index)``: its random transforms are reseeded from
    ``sample_seed`` before ``dataset[index]`` is fetched, so a sample's augmentation does not depend
    on which process draws it or on what that process drew before."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        sample_seed, index = key
        set_rnd(self.dataset.transform, sample_seed)  # a Compose reseeds only its random transforms
        return self.dataset[index]


def train_loader(
    dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world_size: int = 1, seed: int = 0,
    pin_memory: bool = False, prefetch: int = 4,
) -> DataLoader:
    """Shuffled training loader whose samples are a pure function of (``seed``, epoch, rank).

    An :class:`EpochSampler` splits the cases between ranks and seeds each sample
    (:class:`SeededDataset`); call :func:`start_epoch` before each epoch. Workers persist across
    epochs (short epochs would otherwise spend much of their time starting them again) and each
    keeps up to ``prefetch`` batches in flight. The loader has its own torch generator: it never
    draws from the global one that a checkpoint saves.
    """
    sampler = EpochSampler(len(dataset), seed, rank, world_size)
    kept = {"persistent_workers": True, "prefetch_factor": prefetch} if workers > 0 else {}
    return DataLoader(
        SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed % 2**63), **kept,
    )


def val_loader(dataset: Dataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """One whole volume at a time, in datalist order."""
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Make ``loader`` (from :func:`train_loader`) draw the cases and augmentations of ``epoch``.

    The one place where a run advances its data: samples depend on (seed, epoch, rank) only, so a
    run resumed at ``epoch`` (or mid-epoch, replaying it) sees exactly what an uninterrupted run saw.
    """
    loader.sampler.set_epoch(epoch)
