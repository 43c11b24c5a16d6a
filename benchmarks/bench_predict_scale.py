"""Benchmark prediction at scale on the CPU: gzip I/O, the pipeline's efficiency, parts.

``--io``: NIfTI gzip before (nibabel's default: the standard library) and after (ISA-L, when
``isal`` is installed), in one run on the same files: SOLF's ``measure_case`` end to end on the
224×174×370 four-channel Dixon volume of ``bench_solf.py``, and a prediction's per-case I/O
(read the four int16 channels, write a uint8 label map of that grid). Values read and written
are checked equal between the two.

``--pipeline``: UKBOB phantoms and a Swin-UNETR (random weights) through ``swinbob predict``:
(a) the model alone on the preprocessed cases (the time :func:`swinbob.infer.evaluate.device_stage`
takes per case, images already in memory), (b) the pipeline in one process (the run's own
``elapsed_s``: loading, model, inversion, NIfTI writing, bookkeeping), efficiency = (a) / (b);
(c) two parts (``--num_parts 2``) as two processes of one thread each, against (d) one process
of two threads, in cases/s.

    python benchmarks/bench_predict_scale.py --io --pipeline [--cases 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swinbob import files  # noqa: E402
from swinbob.checkpoint import make_checkpoint  # noqa: E402
from swinbob.data.phantoms import ukbob_case  # noqa: E402
from swinbob.model import ModelConfig, build_model  # noqa: E402
from swinbob.solf.cases import make_task, measure_case  # noqa: E402

from bench_solf import CHANNELS, best_of, cpu_info, synthetic_volume  # noqa: E402


def _load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def io_benchmark(repeats: int) -> None:
    """measure_case and a prediction's read/write with the standard library's gzip vs ISA-L."""
    label, images, affine = synthetic_volume()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        files.use_fast_gzip(False)  # inputs as users have them: written by nibabel's default gzip
        files.write_nifti(root / "labels" / "case.nii.gz", label, affine)
        for name, channel in zip(CHANNELS, images):
            files.write_nifti(root / "images" / f"case_{name}.nii.gz", np.round(channel).astype(np.int16), affine)
        task = make_task("case", root / "labels" / "case.nii.gz", root / "images",
                         {p.name for p in (root / "images").iterdir()}, CHANNELS)
        channels = [root / "images" / f"case_{name}.nii.gz" for name in CHANNELS]
        results, records, written = {}, {}, {}
        for mode in ("stdlib", "isal"):
            if files.use_fast_gzip(mode == "isal") != (mode == "isal"):
                print("isal is not installed: pip install 'swinbob[fast]'")
                return
            records[mode] = measure_case(task)
            load = best_of(lambda: [files.read_nifti(p) for p in channels], repeats)
            out = root / f"pred_{mode}.nii.gz"
            save = best_of(lambda: files.write_nifti(out, label, affine), repeats)
            written[mode] = files.read_nifti(out)[0]
            results[mode] = {"measure_case": best_of(lambda: measure_case(task), repeats), "load": load, "save": save}
        files.use_fast_gzip()
    assert records["stdlib"] == records["isal"], "measure_case records differ"
    assert np.array_equal(written["stdlib"], written["isal"]) and np.array_equal(written["isal"], label)
    print(f"volume {label.shape}, 4 int16 channels + uint8 labels; records and written values equal: yes")
    for step in ("measure_case", "load", "save"):
        (slow, slow_cpu), (fast, fast_cpu) = results["stdlib"][step], results["isal"][step]
        print(f"{step:13s} stdlib {slow:6.2f} s (cpu {slow_cpu:5.2f})  isal {fast:6.2f} s (cpu {fast_cpu:5.2f})  "
              f"ratio {slow / fast:4.2f}x (cpu {slow_cpu / fast_cpu:4.2f}x)")
    io_slow = results["stdlib"]["load"][0] + results["stdlib"]["save"][0]
    io_fast = results["isal"]["load"][0] + results["isal"]["save"][0]
    print(f"prediction per-case I/O (load 4 channels + save labels): {io_slow:.2f} s -> {io_fast:.2f} s, "
          f"{io_slow / io_fast:.2f}x")


def _cohort(root: Path, cases: int, shape: tuple[int, int, int], feature_size: int) -> tuple[Path, Path]:
    (root / "in").mkdir(parents=True)
    for index in range(cases):
        case = ukbob_case(index, shape=shape)
        for name, channel in zip(CHANNELS, case.image):
            files.write_nifti(root / "in" / f"{case.case_id}_{name}.nii.gz", channel.astype(np.float32), case.affine)
    torch.manual_seed(0)
    config = ModelConfig(in_channels=4, out_channels=73, feature_size=feature_size, roi=(96, 96, 96))
    torch.save(make_checkpoint(build_model(config), {"model": config.to_dict(), "task": "ukbob"}, epoch=1), root / "model.pt")
    return root / "in", root / "model.pt"


def model_alone(inputs: Path, checkpoint: Path, out: Path) -> tuple[float, int]:
    """Seconds of the model's part of every case (device_stage) with the images in memory."""
    from swinbob.data.inputs import iterate_cases
    from swinbob.data.transforms import eval_transforms
    from swinbob.infer import cli as eval_cli
    from swinbob.infer.evaluate import device_stage
    args = eval_cli.build_parser("ukbob").parse_args([f"--input_dir={inputs}", f"--output_dir={out}", "--no_etta",
                                                      f"--pretrained_dir={checkpoint.parent}", "--device=cpu",
                                                      f"--pretrained_model_name={checkpoint.name}", "--workers=0"])
    model, cases, settings, _ = eval_cli.setup(args)
    model.eval()
    preprocess = eval_transforms(settings.task, settings.data, with_label=False)
    loaded = list(iterate_cases(cases, preprocess, 0))
    device_stage(model, loaded[0]["case"], loaded[0]["image"], settings)  # warm-up, as the pipeline's first case
    start = time.perf_counter()
    for item in loaded:
        device_stage(model, item["case"], item["image"], settings)
    return time.perf_counter() - start, len(loaded)


def _predict(inputs: Path, checkpoint: Path, out: Path, threads: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "swinbob.commands", "predict", "-i", str(inputs), "-o", str(out), "-m", str(checkpoint),
               "--device=cpu", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _elapsed(folder: Path) -> float:
    return float(json.loads((folder / "summary.json").read_text())["elapsed_s"])


def _model_busy(folder: Path) -> float:
    """The model's seconds in a run, from the closing line of its evaluate.log."""
    match = re.findall(r"model busy ([0-9.]+) s", (folder / "evaluate.log").read_text())
    return float(match[-1])


def pipeline_benchmark(cases: int, shape: tuple[int, int, int], feature_size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        inputs, checkpoint = _cohort(root, cases, shape, feature_size)
        print(f"cohort: {cases} UKBOB phantoms {shape}, 4 channels; Swin-UNETR feature_size {feature_size}, "
              f"ROI 96^3, 73 classes; load avg {_load_avg()}")
        torch.set_num_threads(2)
        alone, count = model_alone(inputs, checkpoint, root / "alone")
        print(f"model alone (2 threads, images in memory): {alone:7.1f} s ({alone / count:.2f} s/case); load avg {_load_avg()}")
        for flag in ("--overlap", "--no-overlap"):
            run = _predict(inputs, checkpoint, root / flag, 2, flag)
            assert run.wait() == 0, run.stderr.read()[-2000:]
            elapsed, busy = _elapsed(root / flag), _model_busy(root / flag)
            print(f"swinbob predict {flag:13s} 1 process x 2 threads: {elapsed:7.1f} s ({elapsed / count:.2f} s/case, "
                  f"{count / elapsed:.3f} cases/s); model alone / pipeline {alone / elapsed:.1%}; model busy in the run "
                  f"{busy:.1f} s = {busy / elapsed:.1%}; load avg {_load_avg()}")
        start = time.perf_counter()
        parts = [_predict(inputs, checkpoint, root / "two", 1, "--num_parts=2", f"--part_id={k}") for k in (0, 1)]
        for part in parts:
            assert part.wait() == 0, part.stderr.read()[-2000:]
        wall = time.perf_counter() - start
        two = max(_elapsed(root / "two" / "parts" / f"part-{k}-of-2") for k in (0, 1))
        one = _elapsed(root / "--overlap")
        print(f"2 parts x 1 thread (--overlap): {two:7.1f} s ({count / two:.3f} cases/s; {count / wall:.3f} with process "
              f"start and model loading) vs 1 process x 2 threads {count / one:.3f} cases/s: {one / two:.2f}x; "
              f"load avg {_load_avg()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--io", action="store_true", help="gzip: standard library vs ISA-L")
    parser.add_argument("--pipeline", action="store_true", help="pipeline efficiency and parts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 80, 120))
    parser.add_argument("--feature_size", type=int, default=24)
    args = parser.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("device:", cpu_info(), "| load avg", _load_avg())
    if args.io:
        io_benchmark(args.repeats)
    if args.pipeline:
        pipeline_benchmark(args.cases, tuple(args.shape), args.feature_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
