"""The training loader: batches are a pure function of (seed, epoch, rank, step).

Exact resume and reproducibility rest on this: the same epoch must give the same patches with or
without worker processes, in a stream started at that epoch (a resumed run) as in one that has
run other epochs before, and without touching the global random generators that checkpoints save.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from swinbob.data.transforms import DataConfig, train_transforms
from swinbob.data.loaders import EpochBatchSampler, EpochSampler, batch_stream, load_splits, make_dataset, train_loader
from swinbob.data.phantoms import write_cohort
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


def _take(stream, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The next ``count`` (image, label) batches of ``stream``."""
    batches = []
    for _ in range(count):
        batch = next(stream)
        batches.append((batch["image"].as_tensor().clone(), batch["label"].as_tensor().clone()))
    return batches


def _epochs(loader, first: int, count: int = 1) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The batches of epochs ``first`` .. ``first + count - 1``, each ``len(loader)`` of them, from one stream."""
    stream = batch_stream(loader, first)
    return [_take(stream, len(loader)) for _ in range(count)]


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``epoch``, from a stream started there."""
    return _epochs(loader, epoch)[0]


def _assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (image_a, label_a), (image_b, label_b) in zip(first, second):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)


def test_epochs_give_the_same_patches_with_and_without_workers(dataset):
    global_rng = torch.get_rng_state()
    in_process = _epochs(train_loader(dataset, 1, workers=0, seed=7), 2, count=2)
    with_workers = _epochs(train_loader(dataset, 1, workers=2, seed=7), 2, count=2)
    for a, b in zip(in_process, with_workers):
        _assert_same(a, b)
    assert torch.equal(torch.get_rng_state(), global_rng), "the loader drew from the global torch generator"


def test_another_epoch_or_seed_gives_other_patches(dataset):
    epoch_0, epoch_1 = _epochs(train_loader(dataset, 1, workers=0, seed=7), 0, count=2)
    other_seed = _epoch(train_loader(dataset, 1, workers=0, seed=8), 0)
    for other in (epoch_1, other_seed):
        assert not any(torch.equal(a[0], b[0]) for a, b in zip(epoch_0, other))


def test_a_resumed_stream_gives_the_patches_of_an_uninterrupted_one(dataset):
    """Epochs 1 and 2 of a stream started at epoch 0 equal those of a stream started at epoch 1,
    as a run resumed there builds it, with or without workers."""
    uninterrupted = _epochs(train_loader(dataset, 1, workers=2, seed=7), 0, count=3)
    resumed = _epochs(train_loader(dataset, 1, workers=0, seed=7), 1, count=2)
    for a, b in zip(uninterrupted[1:], resumed):
        _assert_same(a, b)


def test_capped_epochs_have_their_steps_and_the_next_starts_with_its_own_first_batch(dataset):
    """As with --max_steps_per_epoch: each epoch yields ``max_steps`` batches, the first of its full
    epoch, and the stream then goes on with the next epoch's first batch."""
    capped = train_loader(dataset, 1, workers=2, seed=7, max_steps=2)
    full = train_loader(dataset, 1, workers=0, seed=7)
    assert len(capped) == 2 and len(full) == CASES
    streamed = _epochs(capped, 0, count=3)
    for epoch, batches in enumerate(streamed):
        _assert_same(batches, _epoch(full, epoch)[:2])
    _assert_same(streamed[1], _epoch(capped, 1))  # resumed at epoch 1


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


def test_crop_indices_leave_ignore_voxels_out_of_foreground_and_background():
    """Brute force over the voxels, apart from MONAI: foreground = a label other than 0 and 255,
    background = 0 where the image is above the threshold; without 255 the same as MONAI's rule."""
    from monai.transforms import FgBgToIndicesd

    from swinbob.data.transforms import CropIndicesd
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2, 255], size=(1, 6, 5, 4), p=[0.5, 0.2, 0.1, 0.2]).astype(np.float32)
    image = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)
    out = CropIndicesd(keys="label", image_key="image", image_threshold=0.5)({"label": torch.as_tensor(label),
                                                                              "image": torch.as_tensor(image)})
    flat_label, flat_body = label[0].ravel(), (image > 0.5).any(0).ravel()
    fg = [i for i in range(flat_label.size) if flat_label[i] not in (0, 255)]
    bg = [i for i in range(flat_label.size) if flat_label[i] == 0 and flat_body[i]]
    assert out["label_fg_indices"].tolist() == fg and out["label_bg_indices"].tolist() == bg
    assert 255 in flat_label and fg and bg
    clean = {"label": torch.as_tensor(np.where(label == 255, 3, label)), "image": torch.as_tensor(image)}
    ours = CropIndicesd(keys="label", image_key="image", image_threshold=0.5)(clean)
    monai = FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.5)(clean)
    for key in ("label_fg_indices", "label_bg_indices"):
        assert ours[key].tolist() == np.asarray(monai[key]).tolist()


@pytest.mark.parametrize("size", [CASES, 6])
def test_each_epoch_visits_every_case_once_split_between_ranks(size):
    for epoch in range(3):
        alone = EpochSampler(size, seed=7).samples(epoch)
        assert sorted(index for _, index in alone) == list(range(size))
        ranks = [EpochSampler(size, seed=7, rank=rank, world_size=2) for rank in range(2)]
        drawn = [sampler.samples(epoch) for sampler in ranks]
        assert len(drawn[0]) == len(drawn[1]) == len(ranks[0])  # ranks stay in step
        indices = [index for pairs in drawn for _, index in pairs]
        assert set(indices) == set(range(size)) and len(indices) == size + size % 2  # one repeat pads odd sizes
        seeds = [seed for pairs in drawn for seed, _ in pairs]
        assert len(set(seeds)) == len(seeds)  # a repeated case is augmented differently
        assert set(alone) <= set(drawn[0] + drawn[1])  # the same samples as one process draws, plus the repeat


def test_the_epoch_order_changes_with_the_epoch():
    sampler = EpochSampler(50, seed=7)
    assert [index for _, index in sampler.samples(0)] != [index for _, index in sampler.samples(1)]


def _first_batches(sampler: EpochBatchSampler, first_epoch: int, count: int) -> list[list[tuple[int, int]]]:
    sampler.first_epoch = first_epoch
    stream = iter(sampler)
    return [next(stream) for _ in range(count)]


def test_the_batch_stream_goes_through_epoch_after_epoch_without_straddling():
    sampler = EpochBatchSampler(CASES, batch_size=2, seed=7)
    assert len(sampler) == 3  # 2 + 2 + 1: the last batch of an epoch is short
    streamed = _first_batches(sampler, 4, 3 * len(sampler))
    for epoch in range(4, 7):
        batches = streamed[(epoch - 4) * 3:(epoch - 3) * 3]
        assert [len(b) for b in batches] == [2, 2, 1]
        assert [pair for batch in batches for pair in batch] == EpochSampler(CASES, seed=7).samples(epoch)
        assert batches == _first_batches(sampler, epoch, 3)  # a stream started at that epoch
    capped = EpochBatchSampler(CASES, batch_size=2, seed=7, max_steps=2)
    assert len(capped) == 2
    assert _first_batches(capped, 4, 4) == streamed[0:2] + streamed[3:5]


@pytest.mark.parametrize("size", [CASES, 6])
def test_ranks_draw_disjoint_batches_of_equal_count_each_epoch(size):
    ranks = [EpochBatchSampler(size, batch_size=2, seed=7, rank=rank, world_size=2) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    streams = [_first_batches(sampler, 0, 3 * len(sampler)) for sampler in ranks]
    for epoch in range(3):
        drawn = [pair for stream in streams for batch in stream[2 * epoch:2 * epoch + 2] for pair in batch]
        assert len(set(drawn)) == len(drawn) == size + size % 2  # disjoint slots: no sample on both ranks
        assert {index for _, index in drawn} == set(range(size))


# --- Sampler edges and defaults (from mutation testing) ---

def test_epoch_sampler_rejects_no_cases_and_a_rank_outside_the_world():
    assert EpochSampler(1).size == 1  # one case is enough
    for size, rank, world in ((0, 0, 1), (3, 2, 2), (3, -1, 2)):
        with pytest.raises(ValueError, match=f"need at least one case and 0 <= rank < world_size, got {size}, {rank}, {world}"):
            EpochSampler(size, 0, rank, world)
    with pytest.raises(ValueError, match="batch_size and max_steps must be positive, got 0, None"):
        EpochBatchSampler(4, 0)
    with pytest.raises(ValueError, match="batch_size and max_steps must be positive, got 2, 0"):
        EpochBatchSampler(4, 2, max_steps=0)


def test_sampler_defaults_seed_zero_and_start_at_epoch_zero():
    assert EpochSampler(8).seed == 0 and EpochBatchSampler(8, 2).epochs.seed == 0
    sampler = EpochBatchSampler(8, 2, seed=3)
    assert sampler.first_epoch == 0 and next(iter(sampler)) == sampler.epoch_batches(0)[0]
    loader = train_loader(list(range(8)), 2, workers=0)
    assert loader.batch_sampler.epochs.seed == 0 and loader.pin_memory is False and loader.prefetch_factor is None


def test_every_seed_gives_its_own_epochs_and_negative_seeds_wrap_modulo_2_64():
    orders = {seed: EpochSampler(16, seed).samples(0) for seed in (0, 2, 64)}
    assert len({str(order) for order in orders.values()}) == 3
    assert str(EpochSampler(16, -1).samples(0)) == str(EpochSampler(16, 2**64 - 1).samples(0))


def test_loader_workers_prefetch_the_requested_number_of_batches():
    assert train_loader(list(range(8)), 2, workers=1).prefetch_factor == 4  # nothing is iterated: no process starts
    assert train_loader(list(range(8)), 2, workers=2, prefetch=3).prefetch_factor == 3
