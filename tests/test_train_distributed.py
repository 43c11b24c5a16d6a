"""Data-parallel training does what one process does: 2 gloo ranks, each on its own shard of the
global batch, give the gradients and the update of one process on the whole batch; and the
training loaders give each rank its own cases."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import swinbob.train.engine as train
from swinbob.runtime.distributed import DistContext, launch
from swinbob.labels import IGNORE_LABEL
from swinbob.data.loaders import shard
from swinbob.train.losses import MaskedDiceCELoss
from swinbob.data.phantoms import write_cohort
from swinbob.train.cli import build_parser, resolve_plan
from tiny import TINY_FLAGS

GLOBAL_BATCH = 4


def tiny_net() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights in every process (DDP would broadcast rank 0's anyway)
    return nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.InstanceNorm3d(6, affine=True), nn.ReLU(), nn.Conv3d(6, 3, 1))


def global_batch() -> dict[str, torch.Tensor]:
    """Four samples, each with the same number of voxels labelled 255 (so that the per-rank mean
    cross-entropy averaged over ranks equals the global one)."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(GLOBAL_BATCH, 1, 8, 8, 8, generator=g)
    label = torch.randint(0, 3, (GLOBAL_BATCH, 1, 8, 8, 8), generator=g).float()
    label[:, :, :2] = IGNORE_LABEL
    return {"image": image, "label": label}


def one_step(net: nn.Module, batch: dict) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, stepped = train.train_step(net, batch, MaskedDiceCELoss(), optimizer, scaler)
    assert stepped and torch.isfinite(loss)


def _rank_worker(ctx: DistContext, out_dir: str) -> int:
    torch.set_num_threads(1)
    model = tiny_net()
    net = DistributedDataParallel(model)
    rows = shard(range(GLOBAL_BATCH), ctx.rank, ctx.world_size)
    batch = {k: v[rows] for k, v in global_batch().items()}
    one_step(net, batch)
    torch.save({"rows": rows, "grads": [p.grad for p in model.parameters()], "weights": list(model.parameters())},
               Path(out_dir) / f"rank{ctx.rank}.pt")
    return 0


def test_two_gloo_ranks_give_the_gradients_and_update_of_one_process_on_the_global_batch(tmp_path):
    assert launch(_rank_worker, str(tmp_path), distributed=True, world_size=2, device_name="cpu") == 0
    model = tiny_net()
    one_step(model, global_batch())
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["rows"] == [0, 2] and ranks[1]["rows"] == [1, 3]  # each rank its own half
    for rank in ranks:
        for theirs, ours in zip(rank["grads"], model.parameters()):
            assert torch.allclose(theirs, ours.grad, atol=1e-6, rtol=1e-5)
        for theirs, ours in zip(rank["weights"], model.parameters()):
            assert torch.allclose(theirs, ours.detach(), atol=1e-6, rtol=1e-5)
    half = tiny_net()
    one_step(half, {k: v[[0, 2]] for k, v in global_batch().items()})
    assert not torch.allclose(half[0].weight.grad, model[0].weight.grad, atol=1e-4)  # a shard alone differs


@pytest.fixture(scope="module")
def btcv_plan(tmp_path_factory):
    data = write_cohort("btcv", tmp_path_factory.mktemp("btcv"), 10, shape=(32, 32, 24), val_fraction=0.2).parent
    argv = [f"--json_list={data / 'dataset.json'}", f"--data_dir={data}", f"--logdir={data / 'runs'}", "--workers=0",
            "--cache_rate=0", *TINY_FLAGS, "--batch_size=2"]
    return resolve_plan(build_parser("btcv").parse_args(argv))


def test_each_rank_trains_on_its_own_shard_of_the_cases(btcv_plan):
    assert len(btcv_plan.train_entries) == 8
    loaders = [train.build_loaders(btcv_plan, DistContext(rank=rank, world_size=2))[0] for rank in range(2)]
    assert [len(loader) for loader in loaders] == [2, 2]  # 4 cases per rank per epoch, batches of 2
    for epoch in range(3):  # every epoch: the ranks split the cases (a new split each epoch)
        seen = [{i for batch in loader.batch_sampler.epoch_batches(epoch) for _, i in batch} for loader in loaders]
        assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(8)), (epoch, seen)
    single, _ = train.build_loaders(btcv_plan, DistContext())
    assert {i for b in single.batch_sampler.epoch_batches(0) for _, i in b} == set(range(8))


def _with(plan, **options):
    """``plan`` with some training options changed."""
    import dataclasses
    return dataclasses.replace(plan, options=dataclasses.replace(plan.options, **options))


def test_build_loaders_training_and_validation_settings(btcv_plan):
    """What build_loaders hands on: transforms, cache settings, seed, step cap, validation shard, workers, pinning."""
    from monai.data import CacheDataset, Dataset
    from swinbob.data.loaders import batch_stream
    val_entries = btcv_plan.val_entries
    assert len(val_entries) == 2
    loader, val = train.build_loaders(_with(btcv_plan, seed=7, max_steps_per_epoch=1), DistContext())
    assert len(loader) == 1 and loader.batch_sampler.epochs.seed == 7
    assert isinstance(loader.dataset.dataset, CacheDataset) and loader.dataset.dataset.cache_num == 0  # --cache_rate=0
    assert not loader.pin_memory and not val.pin_memory  # CPU: nothing to pin
    batch = next(batch_stream(loader, 0))
    assert tuple(batch["image"].shape[1:]) == (1, 32, 32, 64) == tuple(batch["label"].shape[1:])  # training ROI crops
    assert len(val) == 2 and val.num_workers == 0
    case = next(iter(val))
    from swinbob.data.transforms import eval_transforms
    whole = eval_transforms(btcv_plan.task, btcv_plan.data)(val_entries[0])  # validation: the whole preprocessed volume
    assert case["image"].shape[1:] == whole["image"].shape and case["label"].shape[1:] == whole["label"].shape
    for rank in range(2):  # each rank validates its own validation case
        _, val = train.build_loaders(btcv_plan, DistContext(rank=rank, world_size=2))
        assert [e["image"] for e in val.dataset.data] == [val_entries[rank]["image"]]
    # options that change the objects built (nothing is loaded here)
    loader, val = train.build_loaders(_with(btcv_plan, use_normal_dataset=True, workers=1), DistContext())
    for dataset in (loader.dataset.dataset, val.dataset):
        assert type(dataset) is Dataset
    assert loader.num_workers == 1 and val.num_workers == 1
    loader, val = train.build_loaders(btcv_plan, DistContext(device=torch.device("cuda")))
    assert loader.pin_memory is True and val.pin_memory is True  # pinned for a CUDA device


def test_train_step_runs_the_forward_pass_in_the_requested_precision():
    """--amp_dtype reaches the forward pass (bf16 autocast works on the CPU too); the loss stays float32."""
    seen = []
    net = tiny_net()
    net.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for amp_dtype, expected in ((torch.bfloat16, torch.bfloat16), (None, torch.float32)):
        loss, stepped = train.train_step(net, global_batch(), MaskedDiceCELoss(), optimizer, scaler, amp_dtype)
        assert stepped and loss.dtype == torch.float32 and torch.isfinite(loss)
        assert seen[-1] == expected


def test_train_step_leaves_a_parameter_without_gradient_in_this_step_untouched():
    """Gradients are freed, not zeroed: AdamW's momentum must not move a branch this batch did not use."""
    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.extra, self.use_extra = tiny_net(), nn.Conv3d(1, 3, 1), True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.main(x) + self.extra(x) if self.use_extra else self.main(x)

    net = TwoBranch()
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train.train_step(net, global_batch(), MaskedDiceCELoss(), optimizer, scaler)
    before = net.extra.weight.detach().clone()
    net.use_extra = False
    _, stepped = train.train_step(net, global_batch(), MaskedDiceCELoss(), optimizer, scaler)
    assert stepped and net.extra.weight.grad is None and torch.equal(net.extra.weight, before)


@pytest.mark.gpu
def test_train_step_moves_a_cpu_batch_to_the_model_s_gpu():
    """The loader yields CPU (pinned) tensors; train_step must move them to the model's device
    (on the CPU alone that move is a no-op, so only this test catches a missing one)."""
    net = tiny_net().cuda()
    before = net[0].weight.detach().clone()
    batch = {k: v.pin_memory() for k, v in global_batch().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss, stepped = train.train_step(net, batch, MaskedDiceCELoss(), optimizer, scaler)
    assert stepped and loss.device.type == "cuda" and torch.isfinite(loss)
    assert not torch.equal(net[0].weight, before)  # the update happened on the GPU weights
