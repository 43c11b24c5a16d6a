"""Datalist checking, datasets and data loaders for training and validation.

:func:`check_datalist` reads every file a datalist names before a run starts and lists *all*
problems at once (missing or unreadable files, image/label grids that disagree, channel counts,
label values the task cannot represent), so a multi-day UKBOB run never dies hours in on case
9,731. Evaluation reuses it for its test lists.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import logging
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

from swinbob.data.nnunet_raw import RawDatasetError
from swinbob.data.transforms import case_name, load_datalist
from swinbob.files import (
    NiftiError, atomic_write_text, check_finite, check_resampled_size, file_identity, load_nifti_header, read_nifti, same_grid,
)
from swinbob.tasks import LabelValueError, Task

log = logging.getLogger(__name__)


class DatalistError(ValueError):
    """A datalist that cannot be used; the message lists every problem found."""

    def __init__(self, problems: Sequence[str], source: str = "datalist") -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line
            super().__init__(f"{source}: {self.problems[0]} (nothing was trained)")
            return
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
    splits: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation entries of a Decathlon datalist (``fold`` selects BraTS folds), or
    of an nnU-Net v2 raw folder (``fold`` of ``splits``, see :mod:`swinbob.data.nnunet_raw`).

    Any problem reading the list itself (not found, bad JSON, a path escaping ``data_dir``)
    becomes a :class:`DatalistError` so that the caller has one error type to report; the raw
    folder's problems (missing or extra channel and label files) are listed one by one.
    """
    try:
        train = load_datalist(json_list, data_dir, "training", fold, allow_absolute, splits)
        val = load_datalist(json_list, data_dir, "validation", fold, allow_absolute, splits)
    except RawDatasetError as exc:
        raise DatalistError(exc.problems, source=exc.source) from exc
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
    if not same_grid(affine, ref_affine):
        delta = float(np.abs(np.asarray(affine) - np.asarray(ref_affine)).max())
        return f"{path}: affine differs from that of {ref_path} (max difference {delta:.4g})"
    return None


def _image_grid(path: str, read_data: bool) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of one image file; with ``read_data`` its voxels are read and must be finite.

    Raises :class:`~swinbob.files.NiftiError` naming the file.
    """
    if not read_data:
        header = load_nifti_header(path)
        shape, affine = tuple(int(s) for s in header.shape), np.asarray(header.affine)
    else:
        data, affine = read_nifti(path, ndim=None)
        check_finite(data, [path])
        shape = tuple(int(s) for s in data.shape)
    if len(shape) < 3:
        raise NiftiError(f"{path}: a {len(shape)}D image (shape {shape}); Swin-BOB needs 3D volumes")
    return shape, affine


def entry_problems(entry: Mapping[str, Any], task: Task, require_label: bool = True, read_images: bool = True,
                   spacing: Sequence[float] | None = None) -> list[str]:
    """Every problem of one datalist entry, as messages that name the file.

    Images are read in full (``read_images``: NaN/Inf voxels and truncated data are found now,
    not hours into training) or checked from their headers only (exists, readable, sane
    affine). Labels are always read in full because their values must be checked
    (``task.check_label_values``). All images and the label must share one grid (shape and affine).
    With ``spacing``, each image's size once resampled to it must stay within ``--max_voxels``.
    """
    problems: list[str] = []
    grids: list[tuple[str, tuple, np.ndarray]] = []
    channels: dict[str, int] = {}
    images = _as_list(entry["image"])
    for path in images:
        try:
            shape, affine = _image_grid(path, read_images)
            if spacing is not None:
                check_resampled_size(path, shape, affine, spacing)
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
    entries: Sequence[Mapping[str, Any]], task: Task, require_label: bool = True, workers: int = 4, read_images: bool = True,
    spacing: Sequence[float] | None = None,
) -> list[str]:
    """Problems of all ``entries`` (empty when usable), checked in parallel threads (see :func:`entry_problems`).

    Threads suffice: the work is file I/O and zlib, both of which release the GIL.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda e: entry_problems(e, task, require_label, read_images, spacing), entries)
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
    on every access. The persistent cache key includes every setting of the deterministic transform
    chain (:func:`transform_hash`) and each file's identity (:func:`identity_hash`), so neither
    changing e.g. the spacing or the intensity window nor replacing a file in place ever silently
    reuses stale volumes.
    """
    data = list(entries)
    if use_normal_dataset:
        return Dataset(data, transform)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        note_changed_files(data, Path(cache_dir))
        dataset = PersistentDataset(data, transform, cache_dir=cache_dir, hash_func=identity_hash, hash_transform=transform_hash)
        note_new_preprocessing(data, dataset.transform_hash, Path(cache_dir))
        return dataset
    return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=max(1, workers), progress=False)


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    return [str(p) for key in ("image", "label") if key in entry for p in _as_list(entry[key])]


def identity_hash(entry: Mapping[str, Any]) -> bytes:
    """Persistent-cache key of an entry: its paths *and* each file's identity (size, mtime_ns, inode).

    A key of path strings alone served the old preprocessed volume after a file was replaced in
    place (a SOLF rerun with other thresholds rewrites every label under the same name), while the
    datalist check read the new file: training silently used stale labels.
    """
    return json_hashing({"entry": dict(entry), "files": {p: file_identity(p) for p in _entry_files(entry)}})


def describe(obj: Any, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-able, process-independent description of ``obj``'s content (the settings a transform holds).

    MONAI's own transform hash falls back to the transforms' class names as soon as one attribute
    is not JSON-serialisable (a tuple of floats inside ``Spacing``, an ``Enum``), so two runs with
    other ``--space_*`` or ``--a_min`` shared one cache entry. This walks objects' attributes
    instead; memory addresses never enter (unknown leaves are described by their type's name).
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, enum.Enum):
        return [type(obj).__qualname__, describe(obj.value, depth + 1, seen)]
    if isinstance(obj, (np.generic,)):
        return describe(obj.item(), depth + 1, seen)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        array = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        if array.size <= 4096 and array.dtype.kind in "biuf":
            return {"array": str(array.dtype), "values": [describe(v) for v in array.ravel().tolist()], "shape": list(array.shape)}
        return {"array": str(array.dtype), "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
    if isinstance(obj, (type, torch.dtype, np.dtype)):
        return str(obj)
    if callable(obj) and hasattr(obj, "__qualname__") and not hasattr(obj, "__dict__") or isinstance(obj, type(describe)):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    if depth > 8 or id(obj) in seen:
        return type(obj).__qualname__
    seen = seen | {id(obj)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v, depth + 1, seen) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [describe(v, depth + 1, seen) for v in items]
    fields = getattr(obj, "__dict__", None)
    if isinstance(fields, dict):
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}",
                **{k: describe(v, depth + 1, seen) for k, v in sorted(fields.items()) if k not in _VOLATILE}}
    return type(obj).__qualname__


_VOLATILE = frozenset({"R", "_lazy", "lazy", "_do_transform", "overrides"})
"""Attributes that hold run state (random generators, lazy-execution switches), not preprocessing settings."""


def transform_hash(transforms: Any) -> bytes:
    """Persistent-cache key of a transform chain, from every setting its transforms hold (:func:`describe`)."""
    return json_hashing(describe(transforms))


def note_new_preprocessing(entries: Sequence[Mapping[str, Any]], key: str, cache_dir: Path) -> int:
    """Log once when ``cache_dir`` holds volumes of these ``entries`` preprocessed with other settings
    (cache files are named entry key + preprocessing key: those are not used, the entries are
    preprocessed again); returns how many entries are cached only under other settings."""
    other = 0
    for entry in entries:
        stem = identity_hash(entry).decode()
        cached = [p.name for p in cache_dir.glob(f"{stem}*.pt")]
        other += bool(cached) and f"{stem}{key}.pt" not in cached
    if other:
        log.warning("--cache_dir %s: %d volume(s) were cached with other preprocessing settings (spacing, intensity "
                    "window, crop, task ...); they are preprocessed again under the new settings", cache_dir, other)
    return other


CACHE_MANIFEST = "file_identities.json"
"""What :func:`note_changed_files` remembers in a cache folder: the identity of each cached file."""


def note_changed_files(entries: Sequence[Mapping[str, Any]], cache_dir: Path) -> list[str]:
    """Log the files that changed since they were last cached (their entries are preprocessed again,
    under a new key) and remember the current identities; returns the changed paths."""
    manifest_path = cache_dir / CACHE_MANIFEST
    try:
        known = json.loads(manifest_path.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    current = {p: file_identity(p) for entry in entries for p in _entry_files(entry)}
    changed = sorted(p for p, identity in current.items() if p in known and known[p] != identity)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        log.warning("--cache_dir %s: %d file(s) changed since they were cached (%s); their cached volumes are "
                    "not used, the files are preprocessed again", cache_dir, len(changed), shown)
    if any(known.get(p) != identity for p, identity in current.items()):
        try:
            atomic_write_text(manifest_path, json.dumps({**known, **current}, sort_keys=True))
        except OSError as exc:  # the cache key alone keeps the data right; only the warning is lost
            log.warning("--cache_dir %s: could not record file identities (%s)", cache_dir, exc)
    return changed


def shard(entries: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Every ``world_size``-th entry from ``rank``: each case on exactly one rank, no padding.

    ``DistributedSampler`` pads with duplicates to equal lengths, which would count some
    validation cases twice; validation needs each case exactly once.
    """
    return list(entries)[rank::world_size]


class EpochSampler:
    """This rank's ``(sample_seed, index)`` pairs of an epoch, a pure function of (seed, epoch).

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

    def __len__(self) -> int:
        """Samples per epoch for this rank (the same on every rank)."""
        return math.ceil(self.size / self.world_size)

    def samples(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's ``(sample_seed, index)`` pairs of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed % 2**64, epoch])
        total = len(self) * self.world_size
        order = np.resize(rng.permutation(self.size), total)  # np.resize repeats from the start
        seeds = rng.integers(0, MAX_SEED, size=total)
        return [(int(seeds[slot]), int(order[slot])) for slot in range(self.rank, total, self.world_size)]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``(sample_seed, index)`` pairs: epoch ``first_epoch``, then the next, and so on.

    Epoch ``e`` contributes its first ``len(self)`` batches of :meth:`EpochSampler.samples`
    (``max_steps`` caps them, as ``--max_steps_per_epoch`` does); a batch never straddles two
    epochs, so the last one of an epoch is short when this rank's share is not a multiple of
    ``batch_size``. Every batch is thus a pure function of (seed, epoch, rank, step), whatever
    epoch the stream started at.

    Why endless: a ``DataLoader`` given this as ``batch_sampler`` is iterated once for the whole
    run, so its workers keep prefetching across epoch boundaries (and during validation) instead
    of the first batch of each epoch waiting for a new iterator to fill its queue.
    ``len(self)`` (hence ``len(loader)``) is the batches per epoch.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 max_steps: int | None = None) -> None:
        if batch_size < 1 or (max_steps is not None and max_steps < 1):
            raise ValueError(f"batch_size and max_steps must be positive, got {batch_size}, {max_steps}")
        self.epochs = EpochSampler(size, seed, rank, world_size)
        self.batch_size = batch_size
        full = math.ceil(len(self.epochs) / batch_size)
        self.steps = min(full, max_steps) if max_steps else full
        self.first_epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.steps

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The ``len(self)`` batches of ``epoch``."""
        samples, size = self.epochs.samples(epoch), self.batch_size
        return [samples[step * size:(step + 1) * size] for step in range(self.steps)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self._batches_from(self.first_epoch)  # read now: a later change leaves this stream alone

    def _batches_from(self, epoch: int) -> Iterator[list[tuple[int, int]]]:
        for current in itertools.count(epoch):
            yield from self.epoch_batches(current)


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
    pin_memory: bool = False, prefetch: int = 4, max_steps: int | None = None,
) -> DataLoader:
    """Shuffled training loader whose batches are a pure function of (``seed``, epoch, rank, step).

    An :class:`EpochBatchSampler` splits the cases between ranks, batches them epoch after epoch
    without end and seeds each sample (:class:`SeededDataset`); ``len(loader)`` is the batches
    per epoch, at most ``max_steps``. Iterate it through :func:`batch_stream`, once per run:
    each of the ``workers`` keeps up to ``prefetch`` batches in flight, across epoch boundaries
    too. (A new iterator would start new workers: ``persistent_workers`` is not needed, and
    would make a second iterator reset, and so take over, the first.) The loader has its own
    torch generator: it never draws from the global one that a checkpoint saves.
    """
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, rank, world_size, max_steps)
    prefetching = {"prefetch_factor": prefetch} if workers > 0 else {}
    return DataLoader(
        SeededDataset(dataset), batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed % 2**63), **prefetching,
    )


def val_loader(dataset: Dataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """One whole volume at a time, in datalist order."""
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def batch_stream(loader: DataLoader, epoch: int) -> Iterator[Any]:
    """The batches of ``loader`` (from :func:`train_loader`) from the start of ``epoch`` on, without end.

    The training loop takes ``len(loader)`` batches per epoch from this one iterator, so that
    loading never pauses between epochs. A run resumed at ``epoch`` (or mid-epoch, discarding the
    batches already trained on) sees exactly what an uninterrupted run saw: batches depend on
    (seed, epoch, rank, step) only.
    """
    loader.batch_sampler.first_epoch = epoch
    return iter(loader)  # the sampler reads first_epoch here
