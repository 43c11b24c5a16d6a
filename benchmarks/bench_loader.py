"""Training loaders alone (no model), from the same NIfTI files: a naive configuration
(workers started every epoch, crop indices found on every sample), the seeded loader with
persistent workers and a new iterator every epoch, and the engine's one stream of batches across
epochs (:func:`swinbob.data.loaders.train_loader`, :func:`swinbob.data.loaders.batch_stream`, as
:func:`swinbob.train.engine.fit` runs them). ``--consume_ms`` holds each batch as a training step would.
The files are a :mod:`swinbob.data.phantoms` BTCV cohort.

    python benchmarks/bench_loader.py --device cpu --data_cases 12 --data_shape 160 160 96 \
        --roi 64 --workers 2 --loader_epochs 5 --consume_ms 100

(Moved out of ``bench_train.py``, whose ``--loader_only`` it was, when that script became the engine's.)
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common import environment, parse_roi, phantom_cohort, print_table, write_json


def pipeline_volumes(args) -> tuple[list[dict], float]:
    """The datalist entries of ``args.data_cases`` phantoms on disk (written first unless present)."""
    from swinbob.data.loaders import load_splits
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="swinbob_bench_"))
    tic = time.perf_counter()
    datalist = phantom_cohort("btcv", root, args.data_cases, args.data_shape)
    written_s = time.perf_counter() - tic
    entries, _ = load_splits(datalist, root)
    return entries, written_s


@dataclass(frozen=True)
class LoaderVariant:
    name: str
    cache_crop_indices: bool  # foreground/background indices cached for RandCropByPosNegLabeld
    kind: str  # "stream": swinbob.data.loaders.train_loader; "per_epoch": seeded, a new iterator every epoch; "old"


LOADER_VARIANTS = {
    "old": LoaderVariant("old", cache_crop_indices=False, kind="old"),
    "old_indices": LoaderVariant("old_indices", cache_crop_indices=True, kind="old"),
    "per_epoch": LoaderVariant("per_epoch", cache_crop_indices=True, kind="per_epoch"),
    "new_no_indices": LoaderVariant("new_no_indices", cache_crop_indices=False, kind="stream"),
    "new": LoaderVariant("new", cache_crop_indices=True, kind="stream"),
}


def old_loader(dataset, batch_size: int, workers: int, pin_memory: bool):
    """A naive training loader: shuffled from the global generator, workers started anew
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

    from swinbob.data.loaders import EpochSampler, SeededDataset

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
    """Each epoch's batches of ``swinbob.data.loaders.train_loader``: ``len(loader)`` from one stream."""
    from swinbob.data.loaders import batch_stream
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
    from swinbob.data.transforms import DataConfig, train_transforms
    from swinbob.data.loaders import make_dataset, train_loader
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

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="recorded only: the loaders run on the CPU")
    p.add_argument("--roi", type=int, nargs="+", default=[96])
    p.add_argument("--batch", type=int, default=4, help="patches per batch (volumes × the task's 4 crops)")
    p.add_argument("--data_dir", default=None, help="where the phantoms are written (default: a temp dir)")
    p.add_argument("--data_cases", type=int, default=12)
    p.add_argument("--data_shape", type=int, nargs=3, default=[240, 240, 128])
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--loader_variants", default="old,per_epoch,new", help=f"comma list of {','.join(LOADER_VARIANTS)}")
    p.add_argument("--loader_epochs", type=int, default=5, help="epochs per loader variant (the first timed apart)")
    p.add_argument("--consume_ms", type=float, default=0.0, help="time each batch is held, as by a step")
    p.add_argument("--out_dir", default=os.environ.get("OUT"), help="where the JSON results go")
    p.add_argument("--json", default=None, help="results file (default: OUT_DIR/loader.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.roi = parse_roi(args.roi)
    unknown = [v for v in args.loader_variants.split(",") if v not in LOADER_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown loader variants {unknown}; choose from {list(LOADER_VARIANTS)}")
    json_path = args.json or (os.path.join(args.out_dir, "loader.json") if args.out_dir else None)
    payload = {"environment": environment(torch.device(args.device)), "loader_only": loader_only(args)}
    write_json(json_path, payload)
    print(json.dumps(payload["environment"]))
    print_loader_only(payload["loader_only"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
