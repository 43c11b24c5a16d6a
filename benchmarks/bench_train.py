"""Training throughput and peak memory: the reference recipe against our fast path, in one run.

Reference (as the upstream code runs it): plain MONAI SwinUNETR, MONAI ``DiceCELoss(to_onehot_y,
softmax)``, ``AdamW(lr 1e-4, wd 1e-5)``, fp16 autocast + ``GradScaler``, ``loss.item()`` every step,
cuDNN autotuning off. Ours: the same network and loss maths (``swinbob.losses.MaskedDiceCELoss``,
equal to DiceCE without ignored voxels) with the switches of :mod:`swinbob.fast` (bf16 autocast,
fused SDPA window attention, channels-last 3D, ``torch.compile`` of model and loss, fused AdamW, no
host sync in the step). Every figure is printed beside the same run's reference and the ratio.

    python benchmarks/bench_train.py                       # GPU: 96³, batch 4, 14 and 73 outputs
    python benchmarks/bench_train.py --device cpu --feature_size 12 --roi 32 --steps 2 --warmup 1

``--data_pipeline`` adds end-to-end throughput with NIfTI files written to local disk and read
through swinbob's datasets and loaders, against the same step on in-memory batches.
``--loader_only`` times the training loaders alone from the same files over several short epochs:
the configuration before issue 6 (workers started every epoch, crop indices found on every
sample), the seeded loader with persistent workers and a new iterator every epoch, and today's
one stream of batches across epochs; ``--consume_ms`` holds each batch as a training step would:

    python benchmarks/bench_train.py --device cpu --loader_only --data_cases 12 --data_shape 160 160 96 \
        --roi 64 --workers 2 --loader_epochs 5 --consume_ms 100
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import itertools
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, also from benchmarks/

from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import SwinUNETR  # noqa: E402

from swinbob import fast  # noqa: E402
from swinbob.losses import MaskedDiceCELoss  # noqa: E402

GIB = 2**30


# ----------------------------------------------------------------------------------------------
# Shared helpers (bench_infer.py imports these)
# ----------------------------------------------------------------------------------------------

def parse_roi(values: list[int]) -> tuple[int, int, int]:
    """1 or 3 sides. A 32³ ROI cannot run (Swin-UNETR's bottleneck would be 1³, which
    InstanceNorm refuses), so it becomes 64×32×32 with a note: the smallest shape that runs."""
    roi = tuple(values * 3) if len(values) == 1 else tuple(values)
    if len(roi) != 3:
        raise SystemExit("--roi takes 1 or 3 integers")
    if all(r == 32 for r in roi):
        print("note: ROI 32³ gives a 1³ bottleneck that InstanceNorm refuses; using 64×32×32")
        roi = (64, 32, 32)
    return roi  # type: ignore[return-value]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else float("nan")


def set_reference_flags(device: torch.device) -> None:
    """PyTorch defaults, as the reference code runs: no cuDNN autotuning, no TF32."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def environment(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    try:
        import monai
        info["monai"] = monai.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    else:
        info["cpu_threads"] = torch.get_num_threads()
    return info


def build_reference_model(in_channels: int, out_channels: int, feature_size: int) -> torch.nn.Module:
    """Plain MONAI SwinUNETR exactly as the reference scripts build it."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0, use_checkpoint=False)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """rows of dicts; columns (key, header, format)."""
    widths = [max(len(h), 10) for _, h, _ in columns]
    print("  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths)))
    for row in rows:
        cells = []
        for (key, _, fmt), w in zip(columns, widths):
            value = row.get(key)
            cells.append(("-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)).ljust(w))
        print("  ".join(cells))


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    reference: bool = False  # reference recipe (MONAI DiceCE, plain AdamW, loss.item() each step)
    amp: str = "fp16"  # fp16 (with GradScaler), bf16, fp32
    sdpa: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_loss: bool = False
    fused_adamw: bool = False
    cudnn_benchmark: bool = False
    engine_step: bool = False  # use swinbob.train.train_step (with its per-step finiteness check)


VARIANTS = {
    "ref": Variant("ref", reference=True),
    "ref_bf16": Variant("ref_bf16", reference=True, amp="bf16"),
    "ref_bf16_compile": Variant("ref_bf16_compile", reference=True, amp="bf16", compile=True),
    "bf16_sdpa": Variant("bf16_sdpa", amp="bf16", sdpa=True, fused_adamw=True, cudnn_benchmark=True),
    "bf16_sdpa_cl": Variant("bf16_sdpa_cl", amp="bf16", sdpa=True, channels_last=True, fused_adamw=True, cudnn_benchmark=True),
    "bf16_sdpa_compile": Variant("bf16_sdpa_compile", amp="bf16", sdpa=True, compile=True, compile_loss=True,
                                 fused_adamw=True, cudnn_benchmark=True),
    "ours": Variant("ours", amp="bf16", sdpa=True, channels_last=True, compile=True, compile_loss=True,
                    fused_adamw=True, cudnn_benchmark=True),
    "ours_engine": Variant("ours_engine", amp="bf16", sdpa=True, channels_last=True, compile=True, compile_loss=True,
                           fused_adamw=True, cudnn_benchmark=True, engine_step=True),
}


@dataclass
class Trainer:
    """Everything one variant's step needs."""

    variant: Variant
    model: torch.nn.Module  # the module to call (maybe compiled)
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device

    def step(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        v = self.variant
        if v.engine_step:
            from swinbob.train import train_step
            loss, _ = train_step(self.model, {"image": image, "label": label}, self.loss_fn, self.optimizer,
                                 self.scaler, self.amp_dtype)
            return loss
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        if v.reference:
            # the upstream trainer: grads to None by hand, autocast around model and loss, scaler, loss.item()
            for param in self.model.parameters():
                param.grad = None
            with autocast:
                logits = self.model(image)
                loss = self.loss_fn(logits, label)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss.item()
            return loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = self.model(image)
        loss = self.loss_fn(logits.float(), label)
        self.scaler.scale(loss).backward()  # scaler disabled (identity) unless fp16
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()  # no host sync: the caller reads losses once per interval


def make_trainer(variant: Variant, in_channels: int, out_channels: int, feature_size: int, device: torch.device) -> Trainer:
    torch.manual_seed(0)
    if variant.reference:
        set_reference_flags(device)
    else:
        fast.set_fast_backend_flags(tf32=False)
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark and device.type == "cuda"
    model = build_reference_model(in_channels, out_channels, feature_size).to(device).train()
    net = fast.accelerate(model, sdpa=variant.sdpa, cached_masks=variant.sdpa, channels_last=variant.channels_last,
                          compile=variant.compile)
    if variant.reference:
        loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    else:
        loss_fn = MaskedDiceCELoss()
        optimizer = fast.fused_adamw(model.parameters(), lr=1e-4, weight_decay=1e-5) if variant.fused_adamw else \
            torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    if variant.compile_loss:
        loss_fn = torch.compile(loss_fn, dynamic=False)
    amp_dtype = None if variant.amp == "fp32" or device.type != "cuda" else {"fp16": torch.float16, "bf16": torch.bfloat16}[variant.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Trainer(variant, net, loss_fn, optimizer, scaler, amp_dtype, device)


def synthetic_batch(batch: int, in_channels: int, out_channels: int, roi, device: torch.device, seed: int = 0):
    """An in-memory batch: smooth random image, blocky labels covering every class."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, in_channels, *roi, generator=g)
    coarse = torch.randint(0, out_channels, (batch, 1, *(max(1, r // 8) for r in roi)), generator=g).float()
    label = torch.nn.functional.interpolate(coarse, size=roi, mode="nearest")
    return image.to(device), label.to(device)


def time_steps(trainer: Trainer, batches, steps: int, warmup: int, device: torch.device) -> dict:
    """Warm up (compilation, cuDNN autotuning), then time ``steps`` steps; returns rates and memory."""
    it = iter(batches)
    for _ in range(warmup):
        trainer.step(*next(it))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    start = time.perf_counter()
    patches = 0
    for _ in range(steps):
        image, label = next(it)
        losses.append(trainer.step(image, label))
        patches += image.shape[0]
    sync(device)
    elapsed = time.perf_counter() - start
    final = torch.stack(losses).float().cpu()
    return {"patches_per_s": patches / elapsed, "step_ms": 1000 * elapsed / steps, "peak_gib": peak_gib(device),
            "loss_first": float(final[0]), "loss_last": float(final[-1]), "finite": bool(torch.isfinite(final).all())}


def repeat(batch):
    while True:
        yield batch


def run_variant(name: str, args, out_channels: int, in_channels: int, device: torch.device, keep: bool = False):
    variant = VARIANTS[name]
    reset_memory(device)
    torch._dynamo.reset()
    tic = time.perf_counter()
    trainer = make_trainer(variant, in_channels, out_channels, args.feature_size, device)
    batch = synthetic_batch(args.batch, in_channels, out_channels, args.roi, device)
    try:
        result = time_steps(trainer, repeat(batch), args.steps, args.warmup, device)
    except torch.OutOfMemoryError as exc:
        result = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    result.update(variant=name, out_channels=out_channels, in_channels=in_channels,
                  setup_and_warmup_s=round(time.perf_counter() - tic, 1))
    if args.profile and name in args.profile:
        result["profile"] = profile_steps(trainer, batch, device, args.out_dir, f"train_{name}_{out_channels}")
    if keep:  # the data-pipeline measurement reuses this (compiled) trainer
        return result, trainer
    del trainer, batch
    reset_memory(device)
    return result, None


def profile_steps(trainer: Trainer, batch, device: torch.device, out_dir: str | None, tag: str, steps: int = 3) -> str:
    """torch.profiler over a few steps; returns the top ops by device time (also written to out_dir)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.step(*batch)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=70, max_name_column_width=90)
    if out_dir:
        Path(out_dir, f"profile_{tag}.txt").write_text(table)
    return table


# ----------------------------------------------------------------------------------------------
# Numerical agreement (GPU, full model)
# ----------------------------------------------------------------------------------------------

def agreement(args, in_channels: int, out_channels: int, device: torch.device) -> dict:
    """Our bf16 fast model vs the plain fp32 model (TF32 off): logits in train mode, and fp32
    gradients of the SDPA model vs the plain one (whole-gradient relative error)."""
    set_reference_flags(device)
    torch.manual_seed(0)
    plain = build_reference_model(in_channels, out_channels, args.feature_size).to(device).train()
    import copy
    ours = fast.accelerate(copy.deepcopy(plain), sdpa=True, channels_last=True)
    image, label = synthetic_batch(2, in_channels, out_channels, args.roi, device, seed=1)
    loss_fn = MaskedDiceCELoss()
    grads = []
    for model, dtype in ((plain, None), (ours, None)):
        model.zero_grad(set_to_none=True)
        loss_fn(model(image), label).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    with torch.no_grad():
        ref_logits = plain(image)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            fast_logits = ours(image)
    out = {"logits_rel_err_bf16_fast_vs_fp32": rel_error(fast_logits.float(), ref_logits),
           "grad_rel_err_fp32_fast_vs_plain": rel_error(grads[1], grads[0])}
    del plain, ours
    reset_memory(device)
    return out


# ----------------------------------------------------------------------------------------------
# Real data pipeline
# ----------------------------------------------------------------------------------------------

def _write_case(job) -> dict:
    import nibabel as nib
    from swinbob.phantoms import btcv_case
    root, index, seed, shape, affine = job
    case = btcv_case(index, seed, shape)
    image_path, label_path = f"imagesTr/img{index:04d}.nii.gz", f"labelsTr/label{index:04d}.nii.gz"
    image = np.asarray(case.image[0] if case.image.ndim == 4 else case.image)
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(root / image_path))
    nib.save(nib.Nifti1Image(case.label.astype(np.uint8), affine), str(root / label_path))
    return {"image": image_path, "label": label_path}


def write_volumes(root: Path, cases: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """BTCV-like phantoms (swinbob.phantoms anatomy) written at the task spacing as .nii.gz + datalist."""
    from swinbob.tasks import get_task
    spacing = get_task("btcv").spacing
    affine = np.diag([*spacing, 1.0])
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    jobs = [(root, index, seed, shape, affine) for index in range(cases)]
    with ProcessPoolExecutor(max_workers=min(cases, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(_write_case, jobs))
    datalist = root / "dataset.json"
    datalist.write_text(json.dumps({"training": entries, "validation": []}))
    return datalist


def pipeline_volumes(args) -> tuple[list[dict], float]:
    """The datalist entries of ``args.data_cases`` phantoms on disk (written first unless present)."""
    from swinbob.loaders import load_splits
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="swinbob_bench_"))
    tic = time.perf_counter()
    if not (root / "dataset.json").exists():
        write_volumes(root, args.data_cases, tuple(args.data_shape))
    written_s = time.perf_counter() - tic
    entries, _ = load_splits(root / "dataset.json", root)
    return entries, written_s


def plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def data_pipeline(args, device: torch.device, trainer: Trainer | None = None) -> dict:
    """Our step fed by swinbob's CacheDataset + loader from NIfTI on disk vs the same step on an
    in-memory batch, in the same process with the same (already compiled) model."""
    from swinbob.data import DataConfig, train_transforms
    from swinbob.loaders import batch_stream, make_dataset, train_loader
    from swinbob.tasks import get_task
    task = get_task("btcv")
    entries, written_s = pipeline_volumes(args)
    config = DataConfig.from_task(task, roi=args.roi)
    tic = time.perf_counter()
    dataset = make_dataset(entries, train_transforms(task, config), workers=args.workers)
    cache_s = time.perf_counter() - tic
    loader = train_loader(dataset, batch_size=args.batch // config.num_samples or 1, workers=args.workers,
                          pin_memory=device.type == "cuda")
    if trainer is None:
        trainer = make_trainer(VARIANTS[args.data_variant], task.in_channels, task.out_channels, args.feature_size, device)

    def from_disk():  # one stream across epochs, as swinbob.train.fit takes it
        for batch in batch_stream(loader, 0):
            yield plain(batch["image"]).to(device, non_blocking=True), plain(batch["label"]).to(device, non_blocking=True)

    mem_batch = synthetic_batch(args.batch, task.in_channels, task.out_channels, args.roi, device)
    in_memory = time_steps(trainer, repeat(mem_batch), args.steps, args.warmup, device)
    disk = time_steps(trainer, from_disk(), args.data_steps, 2, device)
    return {"variant": args.data_variant, "cases": len(entries), "volume_shape": list(args.data_shape),
            "workers": args.workers, "write_s": round(written_s, 1), "cache_s": round(cache_s, 1),
            "in_memory_patches_per_s": in_memory["patches_per_s"], "disk_patches_per_s": disk["patches_per_s"],
            "ratio": disk["patches_per_s"] / in_memory["patches_per_s"]}


# ----------------------------------------------------------------------------------------------
# Loader only (no model): the loaders before issue 6 and before the continuous stream against
# today's, from the same files
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoaderVariant:
    name: str
    cache_crop_indices: bool  # foreground/background indices cached for RandCropByPosNegLabeld
    kind: str  # "stream": swinbob.loaders.train_loader; "per_epoch": seeded, a new iterator every epoch; "old"


LOADER_VARIANTS = {
    "old": LoaderVariant("old", cache_crop_indices=False, kind="old"),
    "old_indices": LoaderVariant("old_indices", cache_crop_indices=True, kind="old"),
    "per_epoch": LoaderVariant("per_epoch", cache_crop_indices=True, kind="per_epoch"),
    "new_no_indices": LoaderVariant("new_no_indices", cache_crop_indices=False, kind="stream"),
    "new": LoaderVariant("new", cache_crop_indices=True, kind="stream"),
}


def old_loader(dataset, batch_size: int, workers: int, pin_memory: bool):
    """The training loader before issue 6: shuffled from the global generator, workers started anew
    every epoch and reseeded from a base seed drawn at each start."""
    from monai.data import DataLoader
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin_memory)


def old_epochs(loader, epochs: int):
    """Each epoch's batches of :func:`old_loader`: a new iterator (new workers) every epoch."""
    from monai.data.utils import set_rnd
    for _ in range(epochs):
        set_rnd(loader.dataset, int(torch.randint(0, 2**31 - 1, ()).item()))
        yield iter(loader)


def per_epoch_loader(dataset, batch_size: int, workers: int, seed: int = 0, prefetch: int = 4):
    """The seeded training loader before the continuous stream: the same samples as today's
    (``EpochSampler``, ``SeededDataset``), persistent workers, but a new iterator every epoch, whose
    first batch waits for a sample to load because nothing was prefetched across the boundary."""
    from monai.data import DataLoader
    from torch.utils.data import Sampler

    from swinbob.loaders import EpochSampler, SeededDataset

    class OneEpoch(Sampler):
        def __init__(self, samples: EpochSampler) -> None:
            self.samples, self.epoch = samples, 0

        def __len__(self) -> int:
            return len(self.samples)

        def __iter__(self):
            return iter(self.samples.samples(self.epoch))

    kept = {"persistent_workers": True, "prefetch_factor": prefetch} if workers > 0 else {}
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=OneEpoch(EpochSampler(len(dataset), seed)),
                      num_workers=workers, generator=torch.Generator().manual_seed(seed), **kept)


def per_epoch_epochs(loader, epochs: int):
    """Each epoch's batches of :func:`per_epoch_loader`: the sampler set to the epoch, a new iterator."""
    for epoch in range(epochs):
        loader.sampler.epoch = epoch
        yield iter(loader)


def stream_epochs(loader, epochs: int):
    """Each epoch's batches of ``swinbob.loaders.train_loader``: ``len(loader)`` from one stream."""
    from swinbob.loaders import batch_stream
    stream = batch_stream(loader, 0)
    for _ in range(epochs):
        yield itertools.islice(stream, len(loader))


def cache_bytes(dataset) -> int:
    """Bytes of the arrays a CacheDataset holds."""
    return sum(value.nbytes for item in dataset._cache for value in item.values() if hasattr(value, "nbytes"))


def crop_ms(dataset, repeats: int = 20) -> float:
    """Mean time of the dataset's RandCropByPosNegLabeld (4 crops) on its first cached case."""
    from monai.transforms import RandCropByPosNegLabeld
    crop = next(t for t in dataset.transform.transforms if isinstance(t, RandCropByPosNegLabeld))
    cached = dataset._cache[0]
    crop(dict(cached))
    tic = time.perf_counter()
    for _ in range(repeats):
        crop(dict(cached))  # a shallow copy: the crop pops the cached indices from its input
    return 1000 * (time.perf_counter() - tic) / repeats


def time_loader(epoch_batches, epochs: int, consume_s: float) -> dict:
    """Patches per second over ``epochs`` epochs (the first, which starts the workers of every
    loader, reported apart) and each epoch's wait for its first batch; ``epoch_batches`` yields
    an iterable of each epoch's batches, ``consume_s`` per batch stands in for a training step."""
    seconds, patches, first_batch_s, batches = [], [], [], []
    for _ in range(epochs):
        tic, count, steps = time.perf_counter(), 0, 0
        for batch in next(epoch_batches):  # a new iterator, if any, is made (and timed) here
            if steps == 0:
                first_batch_s.append(time.perf_counter() - tic)
            count += batch["image"].shape[0]
            steps += 1
            time.sleep(consume_s)
        seconds.append(time.perf_counter() - tic)
        patches.append(count)
        batches.append(steps)
    steady_s = sum(seconds[1:])
    later = first_batch_s[1:]
    return {"first_epoch_s": seconds[0], "epoch_s": seconds[1:], "first_batch_s": first_batch_s,
            "later_first_batch_s": sum(later) / len(later) if later else float("nan"),
            "patches_per_s": sum(patches[1:]) / steady_s if steady_s else float("nan"),
            "patches_per_s_all_epochs": sum(patches) / sum(seconds), "batches_per_epoch": batches}


def loader_only(args) -> dict:
    """Loader throughput (patches/s, no model) of each of ``args.loader_variants`` on the same files.

    With ``--consume_ms`` each batch is held that long, as by a training step; the in-memory
    reference is then the rate of those steps alone, and ``ratio`` the share of it each loader reaches.
    """
    from swinbob.data import DataConfig, train_transforms
    from swinbob.loaders import make_dataset, train_loader
    from swinbob.tasks import get_task
    task = get_task("btcv")
    entries, written_s = pipeline_volumes(args)
    config = DataConfig.from_task(task, roi=args.roi)
    batch = args.batch // config.num_samples or 1
    consume_s = args.consume_ms / 1000
    in_memory = batch * config.num_samples / consume_s if consume_s else float("nan")
    results = []
    for name in args.loader_variants.split(","):
        variant = LOADER_VARIANTS[name]
        tic = time.perf_counter()
        dataset = make_dataset(entries, train_transforms(task, config, variant.cache_crop_indices), workers=args.workers)
        cache_s = time.perf_counter() - tic
        if variant.kind == "stream":
            loader = train_loader(dataset, batch, args.workers, seed=0)
            epoch_batches = stream_epochs(loader, args.loader_epochs)
        elif variant.kind == "per_epoch":
            loader = per_epoch_loader(dataset, batch, args.workers, seed=0)
            epoch_batches = per_epoch_epochs(loader, args.loader_epochs)
        else:
            loader = old_loader(dataset, batch, args.workers, pin_memory=False)
            epoch_batches = old_epochs(loader, args.loader_epochs)
        timing = time_loader(epoch_batches, args.loader_epochs, consume_s)
        results.append({"variant": name, "cache_s": cache_s, "cache_mib": cache_bytes(dataset) / 2**20,
                        "crop_ms": crop_ms(dataset), **timing, "ratio": timing["patches_per_s"] / in_memory})
        del epoch_batches, loader, dataset  # the stream's workers stop with it
        gc.collect()
    return {"cases": len(entries), "volume_shape": list(args.data_shape), "roi": list(args.roi), "workers": args.workers,
            "batch_volumes": batch, "epochs": args.loader_epochs, "consume_ms": args.consume_ms, "write_s": written_s,
            "in_memory_patches_per_s": in_memory, "variants": results}


def print_loader_only(result: dict) -> None:
    print(f"\nloader only: {result['cases']} cases {result['volume_shape']}, roi {result['roi']}, "
          f"{result['workers']} workers, {result['epochs']} epochs, {result['consume_ms']} ms per batch")
    print_table(result["variants"], [("variant", "variant", "s"), ("patches_per_s", "patches/s", ".2f"),
                                     ("ratio", "x in-mem", ".2f"), ("first_epoch_s", "1st epoch s", ".2f"),
                                     ("later_first_batch_s", "1st batch s (epochs 2+)", ".3f"),
                                     ("patches_per_s_all_epochs", "all epochs", ".2f"), ("crop_ms", "crop ms", ".1f"),
                                     ("cache_mib", "cache MiB", ".1f"), ("cache_s", "cache s", ".1f")])
    if result["consume_ms"]:
        print(f"in-memory reference (the steps alone): {result['in_memory_patches_per_s']:.2f} patches/s")


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--feature_size", type=int, default=48)
    p.add_argument("--roi", type=int, nargs="+", default=[96])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out_channels", type=int, nargs="+", default=[14, 73],
                   help="output channels to measure (14: BTCV with 1 input channel; 73: UKBOB with 4)")
    p.add_argument("--variants", default="ref,ours", help=f"comma list of {','.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--agreement", action="store_true", help="check bf16 fast logits / fp32 gradients against plain fp32")
    p.add_argument("--profile", default="", help="comma list of variants to profile with torch.profiler")
    p.add_argument("--data_pipeline", action="store_true", help="also measure NIfTI-from-disk throughput")
    p.add_argument("--data_variant", default="ours")
    p.add_argument("--data_dir", default=None, help="where to write the volumes (default: a temp dir)")
    p.add_argument("--data_cases", type=int, default=12)
    p.add_argument("--data_shape", type=int, nargs=3, default=[240, 240, 128])
    p.add_argument("--data_steps", type=int, default=40)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--loader_only", action="store_true",
                   help="time the loaders alone (no model) from NIfTI, the older configurations against the new")
    p.add_argument("--loader_variants", default="old,per_epoch,new", help=f"comma list of {','.join(LOADER_VARIANTS)}")
    p.add_argument("--loader_epochs", type=int, default=5, help="epochs per loader variant (the first timed apart)")
    p.add_argument("--consume_ms", type=float, default=0.0, help="loader only: time each batch is held, as by a step")
    p.add_argument("--out_dir", default=os.environ.get("OUT"), help="where JSON results and profiles go")
    p.add_argument("--json", default=None, help="results file (default: OUT_DIR/train.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.roi = parse_roi(args.roi)
    device = torch.device(args.device)
    args.profile = [v for v in args.profile.split(",") if v]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    json_path = args.json or (os.path.join(args.out_dir, "train.json") if args.out_dir else None)
    payload = {"environment": environment(device), "settings": {"roi": args.roi, "batch": args.batch,
               "feature_size": args.feature_size, "steps": args.steps, "warmup": args.warmup}, "results": []}
    print(json.dumps(payload["environment"]))
    if args.loader_only:
        unknown = [v for v in args.loader_variants.split(",") if v not in LOADER_VARIANTS]
        if unknown:
            raise SystemExit(f"unknown loader variants {unknown}; choose from {list(LOADER_VARIANTS)}")
        payload["loader_only"] = loader_only(args)
        write_json(json_path, payload)
        print_loader_only(payload["loader_only"])
        return 0
    for out_channels in args.out_channels:
        in_channels = 1 if out_channels == 14 else 4 if out_channels == 73 else 1
        if args.agreement:
            payload.setdefault("agreement", {})[str(out_channels)] = agreement(args, in_channels, out_channels, device)
            print("agreement", out_channels, payload["agreement"][str(out_channels)], flush=True)
        for name in variants:
            # the data pipeline (BTCV: 1 input, 14 outputs) reuses the compiled trainer of its variant
            keep = args.data_pipeline and out_channels == 14 and name == args.data_variant
            result, trainer = run_variant(name, args, out_channels, in_channels, device, keep=keep)
            profile = result.pop("profile", None)
            if profile:
                print(profile)
            payload["results"].append(result)
            print(json.dumps(result), flush=True)
            write_json(json_path, payload)
            if keep:
                payload["data_pipeline"] = data_pipeline(args, device, trainer)
                print("data_pipeline", json.dumps(payload["data_pipeline"]), flush=True)
                write_json(json_path, payload)
                del trainer
                reset_memory(device)
    if args.data_pipeline and "data_pipeline" not in payload:
        payload["data_pipeline"] = data_pipeline(args, device)
        print("data_pipeline", json.dumps(payload["data_pipeline"]), flush=True)
        write_json(json_path, payload)
    # summary: each variant against the same run's reference of the same output count
    rows = []
    for r in payload["results"]:
        ref = next((x for x in payload["results"] if x["variant"] == "ref" and x["out_channels"] == r["out_channels"]), None)
        row = dict(r)
        if ref and "patches_per_s" in r and "patches_per_s" in ref:
            row["speedup"] = r["patches_per_s"] / ref["patches_per_s"]
            row["mem_ratio"] = r["peak_gib"] / ref["peak_gib"] if ref["peak_gib"] == ref["peak_gib"] else float("nan")
        rows.append(row)
    payload["summary"] = rows
    write_json(json_path, payload)
    print(f"\ntraining, {args.roi} batch {args.batch}, feature_size {args.feature_size}, {payload['environment'].get('gpu', device)}")
    print_table(rows, [("out_channels", "outputs", "d"), ("variant", "variant", "s"), ("patches_per_s", "patches/s", ".2f"),
                       ("speedup", "x ref", ".2f"), ("peak_gib", "peak GiB", ".2f"), ("mem_ratio", "mem/ref", ".2f"),
                       ("setup_and_warmup_s", "setup s", ".0f"), ("error", "error", "s")])
    if "data_pipeline" in payload:
        d = payload["data_pipeline"]
        print(f"data pipeline ({d['variant']}): disk {d['disk_patches_per_s']:.2f} vs in-memory {d['in_memory_patches_per_s']:.2f} "
              f"patches/s = {100 * d['ratio']:.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
