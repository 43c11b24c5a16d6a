"""The training loader: cases and augmentations are a pure function of (seed, epoch, rank).

Exact resume and reproducibility rest on this: the same epoch must give the same patches with or
without (persistent) worker processes, in a fresh loader (a resumed run) as in one that has run
other epochs before, and without touching the global random generators that checkpoints save.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from swinbob.data import DataConfig, train_transforms
from swinbob.loaders import EpochSampler, load_splits, make_dataset, start_epoch, train_loader
from swinbob.phantoms import write_cohort
from swinbob.tasks import get_task

CASES = 5


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_cohort("btcv", tmp_path_factory.mktemp("loaders"), CASES, shape=(40, 40, 32), val_fraction=0).parent


def _dataset(cohort: Path, cache_crop_indices: bool = True):
    entries, _ = load_splits(cohort / "dataset.json", cohort)
    task = get_task("btcv")
    config = DataConfig.from_task(task, roi=(16, 16, 16), spacing=(4.0, 4.0, 4.0))
    return make_dataset(entries, train_transforms(task, config, cache_crop_indices))


@pytest.fixture(scope="module")
def dataset(cohort):
    return _dataset(cohort)


def _epoch(loader, epoch: int, stop_after: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (image, label) batches of ``epoch``, all of them or the first ``stop_after``."""
    start_epoch(loader, epoch)
    batches = []
    for batch in loader:
        batches.append((batch["image"].as_tensor().clone(), batch["label"].as_tensor().clone()))
        if len(batches) == stop_after:
            break
    return batches


def _assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (image_a, label_a), (image_b, label_b) in zip(first, second):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)


def test_an_epoch_gives_the_same_patches_with_and_without_persistent_workers(dataset):
    global_rng = torch.get_rng_state()
    in_process = _epoch(train_loader(dataset, 1, workers=0, seed=7), 3)
    with_workers = train_loader(dataset, 1, workers=2, seed=7)
    assert with_workers.persistent_workers
    _assert_same(in_process, _epoch(with_workers, 3))
    assert torch.equal(torch.get_rng_state(), global_rng), "the loader drew from the global torch generator"


def test_another_epoch_or_seed_gives_other_patches(dataset):
    epoch_0 = _epoch(train_loader(dataset, 1, workers=0, seed=7), 0)
    epoch_1 = _epoch(train_loader(dataset, 1, workers=0, seed=7), 1)
    other_seed = _epoch(train_loader(dataset, 1, workers=0, seed=8), 0)
    for other in (epoch_1, other_seed):
        assert not any(torch.equal(a[0], b[0]) for a, b in zip(epoch_0, other))


def test_a_resumed_loader_gives_the_patches_of_an_uninterrupted_one(dataset):
    """Two epochs of one persistent-worker loader (the first cut short, as by --max_steps_per_epoch)
    equal fresh loaders started at each epoch, as a run resumed there builds them."""
    loader = train_loader(dataset, 1, workers=2, seed=7)
    first, second = _epoch(loader, 0, stop_after=2), _epoch(loader, 1)
    _assert_same(first, _epoch(train_loader(dataset, 1, workers=2, seed=7), 0)[:2])
    _assert_same(second, _epoch(train_loader(dataset, 1, workers=0, seed=7), 1))


def test_patches_do_not_depend_on_the_global_random_state(dataset):
    torch.manual_seed(1)
    np.random.seed(1)
    first = _epoch(train_loader(dataset, 1, workers=0, seed=7), 2)
    torch.manual_seed(2)
    np.random.seed(2)
    _assert_same(first, _epoch(train_loader(dataset, 1, workers=0, seed=7), 2))


def test_cached_crop_indices_give_the_same_patches_as_scanning_the_label(cohort, dataset):
    cached = dataset._cache[0]
    assert cached["label_fg_indices"].dtype == np.int32 and cached["label_bg_indices"].dtype == np.int32
    scanning = _dataset(cohort, cache_crop_indices=False)
    assert "label_fg_indices" not in scanning._cache[0]
    _assert_same(_epoch(train_loader(dataset, 1, workers=0, seed=7), 1),
                 _epoch(train_loader(scanning, 1, workers=0, seed=7), 1))


@pytest.mark.parametrize("size", [CASES, 6])
def test_each_epoch_visits_every_case_once_split_between_ranks(size):
    for epoch in range(3):
        alone = EpochSampler(size, seed=7)
        alone.set_epoch(epoch)
        assert sorted(index for _, index in alone) == list(range(size))
        ranks = [EpochSampler(size, seed=7, rank=rank, world_size=2) for rank in range(2)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        drawn = [list(sampler) for sampler in ranks]
        assert len(drawn[0]) == len(drawn[1]) == len(ranks[0])  # ranks stay in step
        indices = [index for pairs in drawn for _, index in pairs]
        assert set(indices) == set(range(size)) and len(indices) == size + size % 2  # one repeat pads odd sizes
        seeds = [seed for pairs in drawn for seed, _ in pairs]
        assert len(set(seeds)) == len(seeds)  # a repeated case is augmented differently
        assert set(alone) <= set(drawn[0] + drawn[1])  # the same samples as one process draws, plus the repeat


def test_the_epoch_order_changes_with_the_epoch():
    sampler = EpochSampler(50, seed=7)
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append([index for _, index in sampler])
    assert orders[0] != orders[1]
