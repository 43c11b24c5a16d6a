"""Evaluation engine: geometry back to the input space, metrics through the whole pipeline,
BraTS label convention, label mapping, GIFs, failures, skipping and the OOM fallback."""

import csv
import logging
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from swinbob.infer import window
from swinbob.data.transforms import DataConfig
from swinbob.errors import ConfigError
from swinbob.infer.cli import parse_label_map
from swinbob.infer.evaluate import NO_ETTA, Case, EvalSettings, predict_case, run_evaluation
from swinbob.data.inputs import folder_cases
from swinbob.infer.outputs import map_labels, regions_to_labels
from swinbob.infer.window import WindowSettings, predict_logits
from swinbob.tasks import Intensity, get_task
from swinbob.viz import LEGEND_WIDTH, GifSettings, panel_shape, write_gif
from tiny import WIDE_ROI, tiny_config

SHAPE = (37, 45, 29)
# Stored as (i -> -y, j -> +z, k -> -x): not RAS, anisotropic; RAS spacing is BTCV's (1.5, 1.5, 2.0),
# so resampling is the identity and a perfect model must score Dice 1 / HD95 0 in the input space.
NON_RAS = np.array([[0, 0, -1.5, 10.0], [-1.5, 0, 0, 20.0], [0, 2.0, 0, -5.0], [0, 0, 0, 1]])
OTHER_SPACING = np.array([[-1.1, 0, 0, 3.0], [0, 0, 1.7, -8.0], [0, -2.6, 0, 12.0], [0, 0, 0, 1]])
BODY_HU, AIR_HU = -160.0, -1000.0


def hu_of(label: int) -> float:
    return -100.0 + 25.0 * label


def phantom_labels(seed: int, organs=(1, 6, 8, 11)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    grid = np.indices(SHAPE)
    for label in organs:
        centre = rng.uniform(10, np.array(SHAPE) - 10)
        radius = rng.uniform(3, 6, size=3)
        labels[(((grid.T - centre) / radius) ** 2).T.sum(0) <= 1] = label
    return labels


def write_btcv_case(folder: Path, name: str, affine=NON_RAS, seed: int = 0, organs=(1, 6, 8, 11)) -> Case:
    labels = phantom_labels(seed, organs)
    image = np.full(SHAPE, AIR_HU, np.float32)
    image[2:-2, 3:-3, 2:-2] = BODY_HU
    for label in np.unique(labels[labels > 0]):
        image[labels == label] = hu_of(int(label))
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / f"{name}_label.nii.gz")
    return Case(name, (str(folder / f"{name}.nii.gz"),), str(folder / f"{name}_label.nii.gz"))


class IntensityOracle(nn.Module):
    """A 'perfect model': reads the organ back from the windowed CT intensity it was painted with
    (exact here because the preprocessing only reorients and crops), and outputs one-hot logits,
    optionally in another label space (``remap``: dataset label -> model label)."""

    def __init__(self, out_channels: int = 14, remap: dict[int, int] | None = None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.out_channels, self.remap = out_channels, remap or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, 0] * 425.0 - 175.0
        label = torch.round((hu + 100.0) / 25.0)
        label = torch.where((label >= 1) & (label <= 13) & ((hu - (label * 25.0 - 100.0)).abs() < 5), label, 0).long()
        for source, target in self.remap.items():
            label = torch.where(label == source, torch.full_like(label, target + 1000), label)
        label = torch.where(label >= 1000, label - 1000, label)
        return 10.0 * nn.functional.one_hot(label, self.out_channels).movedim(-1, 1).float()


def settings_for(task, out: Path, **kw) -> EvalSettings:
    roi = (32, 32, 32)
    return EvalSettings(task=task, data=DataConfig.from_task(task, roi=roi), window=WindowSettings(roi, 2, 0.25),
                        output_dir=out, methods=(NO_ETTA,), **kw)


def rows_of(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_perfect_model_scores_one_and_predictions_keep_the_input_geometry(tmp_path):
    cases = [write_btcv_case(tmp_path / "data", "case_a", NON_RAS, 0), write_btcv_case(tmp_path / "data", "case_b", NON_RAS, 1)]
    settings = settings_for(get_task("btcv"), tmp_path / "out", save_predictions=True)
    summary = run_evaluation(IntensityOracle(), cases, settings)
    assert summary["cases"]["evaluated"] == 2 and summary["failures"] == []
    for case in cases:
        written = nib.load(tmp_path / "out" / "predictions" / f"{case.name}.nii.gz")
        source = nib.load(case.image[0])
        assert written.shape == source.shape == SHAPE
        assert np.array_equal(written.affine, source.affine)
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(nib.load(case.label).dataobj))
    scored = [r for r in rows_of(tmp_path / "out") if r["dice"] != "nan"]
    assert {r["class"] for r in scored} == {"spleen", "liver", "aorta", "pancreas"}
    assert all(float(r["dice"]) == 1.0 and float(r["hd95_mm"]) == 0.0 for r in scored)
    assert summary["metrics"][NO_ETTA]["dice"]["overall"]["mean"] == 1.0


class LiverThresholdOracle(nn.Module):
    """Liver wherever the windowed CT is brighter than halfway between body and liver: interpolation
    blurs the boundary symmetrically, so the organ's position survives two resamplings."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        liver = (x[:, 0] * 425.0 - 175.0) > (BODY_HU + hu_of(6)) / 2
        return 10.0 * nn.functional.one_hot(liver.long() * 6, 14).movedim(-1, 1).float()


def test_resampled_input_comes_back_on_its_own_grid(tmp_path):
    case = write_btcv_case(tmp_path / "data", "resampled", OTHER_SPACING, 2, organs=(6,))
    liver = np.asarray(nib.load(case.label).dataobj) == 6
    settings = settings_for(get_task("btcv"), tmp_path / "out", save_predictions=True)
    run_evaluation(LiverThresholdOracle(), [case], settings)
    written = nib.load(tmp_path / "out" / "predictions" / "resampled.nii.gz")
    assert written.shape == SHAPE and np.array_equal(written.affine, nib.load(case.image[0]).affine)
    predicted = np.asarray(written.dataobj) == 6
    shift_mm = (np.argwhere(predicted).mean(0) - np.argwhere(liver).mean(0)) * np.array([1.1, 2.6, 1.7])
    assert np.linalg.norm(shift_mm) < 1.0
    assert 2 * (predicted & liver).sum() / (predicted.sum() + liver.sum()) > 0.8


def test_brats_regions_are_written_in_the_1_2_3_convention(tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[10:25, 10:30, 8:20] = 2
    labels[13:22, 14:26, 10:18] = 1
    labels[15:20, 16:22, 12:16] = 3
    folder = tmp_path / "BraTS-1"
    folder.mkdir()
    files = []
    for channel in ("t1n", "t1c", "t2w", "t2f"):
        image = np.zeros(SHAPE, np.float32)
        image[3:-3, 3:-3, 3:-3] = 0.5
        image[labels > 0] = 0.5 + labels[labels > 0]
        files.append(str(folder / f"BraTS-1-{channel}.nii.gz"))
        nib.save(nib.Nifti1Image(image, NON_RAS), files[-1])
    nib.save(nib.Nifti1Image(labels, NON_RAS), folder / "BraTS-1-seg.nii.gz")

    class RegionOracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raw = torch.round(x[:, 0] - 0.5).clamp(min=0)
            regions = torch.stack([(raw == 1) | (raw == 3), raw > 0, raw == 3], dim=1)
            return torch.where(regions, 10.0, -10.0)

    task = get_task("brats")
    settings = settings_for(task, tmp_path / "out", save_predictions=True)
    settings.data = DataConfig(spacing=(1.5, 1.5, 2.0), intensity=Intensity("window", 0, 10, 0, 10), roi=(32, 32, 32))
    case = Case("BraTS-1", tuple(files), str(folder / "BraTS-1-seg.nii.gz"))
    run_evaluation(RegionOracle(), [case], settings)
    written = np.asarray(nib.load(tmp_path / "out" / "predictions" / "BraTS-1.nii.gz").dataobj)
    assert np.array_equal(written, labels)
    assert {r["class"]: float(r["dice"]) for r in rows_of(tmp_path / "out")} == {"TC": 1.0, "WT": 1.0, "ET": 1.0}


def test_region_masks_become_labels_with_the_chosen_et_value():
    tc = torch.tensor([1, 1, 0, 0], dtype=torch.bool)
    wt = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    et = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    assert regions_to_labels(torch.stack([tc, wt, et])).tolist() == [3, 1, 2, 0]
    assert regions_to_labels(torch.stack([tc, wt, et]), et_label=4).tolist() == [4, 1, 2, 0]


def test_label_map_lookup_sends_unmapped_ids_to_background_and_keeps_integer_labels():
    labels = torch.tensor([[0, 1, 5], [6, 9, 1]])
    mapped = map_labels(labels, {1: 1, 5: 6, 80: 7})  # model 5 -> dataset 6; 6 and 9 are not mapped
    assert mapped.tolist() == [[0, 1, 6], [0, 0, 1]] and mapped.dtype == torch.int16
    assert map_labels(labels, {}).tolist() == [[0, 0, 0], [0, 0, 0]]  # an empty map: all background
    empty = map_labels(torch.zeros((0, 3), dtype=torch.int64), {1: 2})  # no voxel at all
    assert empty.shape == (0, 3) and empty.dtype == torch.int16


def test_label_map_scores_a_ukbob_model_zero_shot_on_mapped_classes_only(tmp_path):
    case = write_btcv_case(tmp_path / "data", "mapped", NON_RAS, 0)
    # the "UKBOB model" calls BTCV spleen 1 -> 1, liver 6 -> 5, and everything else intestine (18)
    oracle = IntensityOracle(73, remap={1: 1, 6: 5, 8: 18, 11: 18})
    task = get_task("btcv")
    label_map = parse_label_map('{"5": 6, "1": 1}', task, out_channels=73)
    settings = settings_for(task, tmp_path / "out", label_map=label_map, save_predictions=True)
    summary = run_evaluation(oracle, [case], settings)
    rows = rows_of(tmp_path / "out")
    assert {r["class"]: float(r["dice"]) for r in rows} == {"spleen": 1.0, "liver": 1.0}
    assert summary["classes"] == {"spleen": [1], "liver": [6]}
    written = np.asarray(nib.load(tmp_path / "out" / "predictions" / "mapped.nii.gz").dataobj)
    assert set(np.unique(written)) == {0, 1, 6}  # dataset IDs; unmapped organs are background


@pytest.mark.parametrize("text", ['{"5": 0}', '{"80": 6}', '{"5": 99}', "[5, 6]", "not json"])
def test_bad_label_maps_are_configuration_errors(text):
    with pytest.raises(ConfigError):
        parse_label_map(text, get_task("btcv"), out_channels=73)


def test_broken_cases_are_reported_and_the_run_goes_on(tmp_path):
    good = write_btcv_case(tmp_path / "data", "good")
    corrupt = tmp_path / "data" / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not a nifti")
    two_channels = tmp_path / "data" / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), NON_RAS), two_channels)
    cases = [Case("corrupt", (str(corrupt),), good.label), good, Case("two", (str(two_channels),), good.label)]
    summary = run_evaluation(IntensityOracle(), cases, settings_for(get_task("btcv"), tmp_path / "out"))
    assert summary["cases"] == {"total": 3, "evaluated": 1, "failed": 2, "skipped": 0}
    reasons = {f["case"]: f["reason"] for f in summary["failures"]}
    assert "corrupt.nii.gz" in reasons["corrupt"]
    assert "2 channel(s)" in reasons["two"]


def test_unlabelled_cases_are_written_once_and_skipped_afterwards(tmp_path):
    write_btcv_case(tmp_path / "in", "scan")
    (tmp_path / "in" / "scan_label.nii.gz").unlink()
    cases = folder_cases(tmp_path / "in", ("CT",))
    assert [c.name for c in cases] == ["scan"] and cases[0].label is None
    settings = settings_for(get_task("btcv"), tmp_path / "out")
    first = run_evaluation(IntensityOracle(), cases, settings)
    assert first["cases"]["evaluated"] == 1 and (tmp_path / "out" / "predictions" / "scan.nii.gz").exists()
    assert run_evaluation(IntensityOracle(), cases, settings)["skipped"] == ["scan"]
    settings.overwrite = True
    assert run_evaluation(IntensityOracle(), cases, settings)["cases"]["evaluated"] == 1


def test_multichannel_folder_cases_are_grouped_in_channel_order(tmp_path):
    for name in ("B-1-t2f", "B-1-t1n", "B-1-t1c", "B-1-t2w", "B-1-seg", "B-2-t1n"):
        (tmp_path / f"{name}.nii.gz").touch()
    cases = folder_cases(tmp_path, ("t1n", "t1c", "t2w", "t2f"))
    assert [c.name for c in cases] == ["B-1", "B-2"]
    assert [Path(p).name for p in cases[0].image] == ["B-1-t1n.nii.gz", "B-1-t1c.nii.gz", "B-1-t2w.nii.gz", "B-1-t2f.nii.gz"]
    assert "missing t1c" in cases[1].image[1]  # reported as that case's failure, not the run's


def test_nnunet_channel_indices_name_the_tasks_channels_in_order(tmp_path):
    for name in ("B-1_0003", "B-1_0000", "B-1_0002", "B-1_0001", "B-1_0004", "B-2_0000"):  # 0004: no 5th channel
        (tmp_path / f"{name}.nii.gz").touch()
    cases = folder_cases(tmp_path, ("t1n", "t1c", "t2w", "t2f"))
    assert [c.name for c in cases] == ["B-1", "B-2"]
    assert [Path(p).name for p in cases[0].image] == ["B-1_0000.nii.gz", "B-1_0001.nii.gz", "B-1_0002.nii.gz",
                                                      "B-1_0003.nii.gz"]
    assert "missing t1c" in cases[1].image[1]
    (tmp_path / "B-1-t1n.nii.gz").touch()  # the same channel by name and by index
    with pytest.raises(ValueError, match="two t1n files for case 'B-1'"):
        folder_cases(tmp_path, ("t1n", "t1c", "t2w", "t2f"))
    single = tmp_path / "ct"
    single.mkdir()
    for name in ("img0001_0000", "img0002"):
        (single / f"{name}.nii.gz").touch()
    assert [c.name for c in folder_cases(single, ("CT",))] == ["img0001", "img0002"]


@pytest.mark.parametrize("with_label", [True, False])
def test_gif_has_the_requested_frames_duration_and_panels(tmp_path, with_label):
    labels = phantom_labels(0)
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    path = write_gif(tmp_path / "case.gif", image, labels, labels if with_label else None, NON_RAS,
                     {1: "spleen", 6: "liver"}, GifSettings(frames=12, downsample=2, duration=0.7))
    frames = iio.imread(path, index=None)
    height, width = 133, 105  # RAS 29 x 37 voxels in plane (1.5 mm), halved to 15 x 19, enlarged 7x to >= 128 rows
    assert frames.shape == (12, height, (3 if with_label else 2) * width + LEGEND_WIDTH, 3)
    assert iio.immeta(path)["duration"] == 700


def test_gif_panels_keep_the_physical_aspect_ratio():
    # 40 x 20 voxels of 1 x 2 mm are 40 x 40 mm: square panels, at least MIN_PANEL (128) pixels high
    assert panel_shape((40, 20, 10), 1, (1.0, 2.0, 3.0)) == (160, 160)
    assert panel_shape((40, 20, 10), 2, (2.0, 1.0, 3.0)) == (130, 520)  # 80 x 20 mm, downsampled by 2


def test_cuda_oom_during_accumulation_is_retried_on_the_cpu(monkeypatch, caplog):
    model, image = IntensityOracle(), torch.rand(1, 1, 40, 36, 30)
    expected = predict_logits(model, image, WindowSettings((32, 32, 32), 2, 0.25))
    real = window.sliding_window_inference
    calls = []

    def out_of_memory_on_gpu(*args, device=None, **kwargs):
        calls.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.OutOfMemoryError("injected")
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(window, "sliding_window_inference", out_of_memory_on_gpu)
    monkeypatch.setattr(window, "accumulation_device", lambda *a: torch.device("cuda"))
    with caplog.at_level(logging.WARNING, logger="swinbob.infer.window"):
        logits = predict_logits(model, image, WindowSettings((32, 32, 32), 2, 0.25))
    assert calls == ["cuda", "cpu"]
    assert torch.equal(logits, expected)
    assert "retrying with CPU accumulation" in caplog.text


def test_out_of_memory_during_etta_keeps_the_source_prediction(tmp_path, monkeypatch):
    from swinbob.infer import evaluate

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(evaluate, "etta_predict", no_memory)
    case = write_btcv_case(tmp_path / "data", "oom")
    settings = settings_for(get_task("btcv"), tmp_path / "out")
    settings.methods = (evaluate.ETTA,)
    summary = run_evaluation(IntensityOracle(), [case], settings)
    assert summary["cases"]["evaluated"] == 1
    assert summary["etta"]["oom"]["fallback"] == "out of memory during adaptation"
    assert summary["metrics"]["etta"]["dice"]["overall"]["mean"] == 1.0


@pytest.mark.parametrize("free_gib, expected", [(64, "cuda"), (0.01, "cpu")])
def test_accumulation_goes_to_the_cpu_when_the_volume_does_not_fit(monkeypatch, free_gib, expected):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
    device = window.accumulation_device(torch.device("cuda"), 14, (300, 300, 200), (96, 96, 96))
    assert device.type == expected


def test_accumulation_bytes_count_two_fp32_copies_per_channel_and_the_count_map_over_the_padded_volume():
    # MONAI sums windows into an fp32 output (C channels) plus a count map (1 channel) and divides
    # into a C-channel copy: (2C + 1) x 4 bytes per voxel; an axis shorter than the ROI is padded to it.
    assert window.accumulation_bytes(14, (300, 300, 200), (96, 96, 96)) == 2_088_000_000  # 29 x 18e6 x 4
    assert window.accumulation_bytes(14, (50, 300, 200), (96, 96, 96)) == 668_160_000  # 29 x (96*300*200) x 4
    assert window.accumulation_bytes(1, (1, 1, 1), (2, 2, 2)) == 96  # 3 x 8 voxels x 4


def test_accumulation_stays_on_the_gpu_up_to_half_its_free_memory(monkeypatch, caplog):
    needed = 2_088_000_000  # 14 channels over 300 x 300 x 200 voxels (previous test)
    asked = []
    gpu = torch.device("cuda", 1)  # the free memory of the GPU that computes, not of the current one
    for free, expected in ((2 * needed, gpu), (2 * needed - 2, torch.device("cpu"))):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: asked.append(device) or (free, 80 * 2**30))
        with caplog.at_level(logging.INFO, logger="swinbob.infer.window"):
            assert window.accumulation_device(gpu, 14, (300, 300, 200), (96, 96, 96)) == expected
    assert asked == [gpu, gpu]
    # 2,088,000,000 B = 1.94 GiB; 4,175,999,998 B = 3.89 GiB
    assert caplog.messages == ["accumulating 1.9 GiB of logits on the CPU (GPU has 3.9 GiB free)"]


@pytest.mark.gpu
def test_gpu_accumulates_on_the_gpu_and_survives_an_injected_oom(monkeypatch, caplog):
    from swinbob.model import build_model

    model = build_model(tiny_config(roi=WIDE_ROI)).cuda().eval()
    image = torch.rand(1, 1, 70, 40, 36, device="cuda")
    settings = WindowSettings((64, 32, 32), 2, 0.25, amp_dtype=torch.bfloat16)
    with torch.no_grad():
        on_gpu = predict_logits(model, image, settings)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    real = window.sliding_window_inference

    def out_of_memory_on_gpu(*args, device=None, **kwargs):
        if torch.device(device).type == "cuda":
            raise torch.OutOfMemoryError("injected")
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(window, "sliding_window_inference", out_of_memory_on_gpu)
    with caplog.at_level(logging.WARNING, logger="swinbob.infer.window"), torch.no_grad():
        on_cpu = predict_logits(model, image, settings)
    assert on_cpu.device.type == "cpu" and "retrying with CPU accumulation" in caplog.text
    assert torch.allclose(on_cpu, on_gpu.cpu(), atol=1e-4)


@pytest.mark.parametrize("layout", ["top_level", "nested"])
def test_checkpoint_config_gives_the_architecture_and_the_trained_preprocessing(layout):
    from swinbob.infer.model_loading import stored_config, trained_preprocessing
    from swinbob.model import ModelConfig

    model = tiny_config(roi=WIDE_ROI).to_dict()
    run = {"task": "btcv", "spacing": [1.75, 3.5, 4.0],
           "intensity": {"kind": "window", "a_min": -100.0, "a_max": 200.0, "b_min": 0.0, "b_max": 1.0}}
    config = {**model, **run} if layout == "top_level" else {"model": model, **run}
    stored = stored_config({"model": {}, "config": config})
    assert ModelConfig.from_dict(stored).feature_size == 12
    task = trained_preprocessing(get_task("btcv"), stored)
    assert task.spacing == (1.75, 3.5, 4.0) and task.intensity.a_min == -100.0
    assert trained_preprocessing(get_task("btcv"), {**stored, "task": "ukbob"}) == get_task("btcv")
    assert stored_config({"state_dict": {}, "epoch": 5}) is None  # upstream format: flags decide


class LowerHalfModel(nn.Module):
    """Class 1 in the lower half of the last axis, whatever the image: not mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 14, *x.shape[2:])
        half = x.shape[-1] // 2
        logits[:, 1, ..., :half] = 10.0
        logits[:, 0, ..., half:] = 5.0
        return logits


def test_flip_tta_setting_is_applied_to_the_source_prediction(tmp_path):
    """`--tta flip` must change what is predicted, not only the summary."""
    model, image = LowerHalfModel().eval(), torch.zeros(1, 32, 32, 32)
    plain, _ = predict_case(model, image, settings_for(get_task("btcv"), tmp_path))
    flipped, _ = predict_case(model, image, settings_for(get_task("btcv"), tmp_path, tta="flip", tta_axes=(2,)))
    assert plain[NO_ETTA][..., :16].eq(1).all() and plain[NO_ETTA][..., 16:].eq(0).all()
    # mean probabilities over the image and its mirror along z are mirror-symmetric along z
    assert torch.equal(flipped[NO_ETTA], flipped[NO_ETTA].flip(-1))


def test_prediction_files_are_written_for_unlabelled_cases_only_unless_asked(tmp_path):
    """Without ``save_predictions`` a labelled case is only scored and
    an unlabelled one (nothing to score) still gets its prediction file."""
    labelled = write_btcv_case(tmp_path / "data", "with_label", NON_RAS, 0)
    unlabelled = Case("no_label", labelled.image, None)
    settings = settings_for(get_task("btcv"), tmp_path / "out", save_predictions=False)
    run_evaluation(IntensityOracle(), [labelled, unlabelled], settings)
    assert sorted(p.name for p in (tmp_path / "out" / "predictions").iterdir()) == ["no_label.nii.gz"]


class _SignPair(nn.Module):
    """No parameters: logits (x, -x), so every Gaussian-blended window gives back the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, -x], dim=1)


def test_a_model_without_parameters_runs_on_the_image_s_device_with_the_default_window_settings():
    image = torch.arange(12 * 10 * 9, dtype=torch.float32).reshape(1, 1, 12, 10, 9) / 100
    logits = window.sliding_window_logits(_SignPair(), image, (8, 8, 8))  # default batch, overlap and accumulation
    assert logits.dtype == torch.float32 and logits.shape == (1, 2, 12, 10, 9)
    assert torch.allclose(logits, torch.cat([image, -image], 1), atol=1e-5)


def test_mixed_precision_is_applied_when_asked_and_logits_come_back_in_fp32():
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 2, 3, padding=1)
    image = torch.randn(1, 1, 8, 8, 8)
    exact = window.sliding_window_logits(conv, image, (8, 8, 8))
    bf16 = window.sliding_window_logits(conv, image, (8, 8, 8), amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, exact)  # bf16 arithmetic happened
    assert torch.allclose(bf16, exact, atol=0.05)  # within bf16's precision


def test_accumulation_is_sized_from_a_swin_unetr_s_output_channels():
    from swinbob.model import build_model
    assert window._out_channels(build_model(tiny_config(out_channels=5)).eval()) == 5
    assert window._out_channels(nn.Conv3d(1, 7, 1)) == 1  # not a Swin-UNETR: the estimate assumes one channel


def test_the_overlap_asked_for_is_the_one_monai_blends_with():
    from monai.inferers import sliding_window_inference
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 2, 3, padding=1)  # zero padding at each window's edge: the blend depends on the windows
    image = torch.randn(1, 1, 20, 20, 20)
    with torch.no_grad():
        ours = predict_logits(conv, image, WindowSettings((8, 8, 8), overlap=0.5))  # windows every 4 voxels
        half = sliding_window_inference(image, (8, 8, 8), 4, conv, overlap=0.5, mode="gaussian")
        quarter = sliding_window_inference(image, (8, 8, 8), 4, conv, overlap=0.25, mode="gaussian")  # every 6
    assert torch.allclose(ours, half, atol=1e-6) and not torch.allclose(ours, quarter, atol=1e-3)


def test_cpu_accumulation_never_asks_a_device_for_its_free_memory(monkeypatch):
    def refuse(*args):
        raise AssertionError("accumulation_device consulted although --accumulate cpu was given")
    monkeypatch.setattr(window, "accumulation_device", refuse)
    image = torch.ones(1, 1, 8, 8, 8)
    logits = predict_logits(_SignPair(), image, WindowSettings((8, 8, 8), accumulate="cpu"))
    assert logits.device.type == "cpu" and torch.allclose(logits[:, 0], image[:, 0])


def test_an_unknown_accumulation_place_is_refused_naming_the_choices():
    with pytest.raises(ValueError) as caught:
        WindowSettings((8, 8, 8), accumulate="gpu")
    assert str(caught.value) == "accumulate must be one of auto, device, cpu, got 'gpu'"


class _Headed(nn.Module):
    """A Swin-UNETR-shaped head (``out.conv``) with 2 output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Module()
        self.out.conv = nn.Conv3d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.conv(x)


def _recording_window(calls: list, fail_on: str | None):
    """A stand-in for MONAI's sliding window that records (compute, accumulation) devices and runs out
    of memory when accumulating on ``fail_on``."""
    def run(image, roi, batch, model, *, overlap, mode, sw_device, device):
        calls.append((torch.device(sw_device).type, torch.device(device).type))
        if torch.device(device).type == fail_on:
            raise torch.OutOfMemoryError("injected")
        return torch.zeros(1, 2, *image.shape[2:])
    return run


def test_an_oom_on_the_gpu_frees_its_cache_logs_the_device_and_retries_on_the_cpu(monkeypatch, caplog):
    calls, emptied = [], []
    monkeypatch.setattr(window, "sliding_window_inference", _recording_window(calls, "cuda"))
    monkeypatch.setattr(window, "_model_device", lambda model, image: torch.device("cuda"))  # as if on a GPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with caplog.at_level(logging.WARNING, logger="swinbob.infer.window"):
        predict_logits(_SignPair(), torch.ones(1, 1, 8, 8, 8), WindowSettings((8, 8, 8), accumulate="device"))
    assert calls == [("cuda", "cuda"), ("cuda", "cpu")] and emptied == [True]
    assert caplog.messages == ["CUDA out of memory while accumulating logits on cuda; retrying with CPU accumulation"]


def test_an_oom_while_accumulating_on_the_cpu_is_not_retried(monkeypatch):
    calls, emptied = [], []
    monkeypatch.setattr(window, "sliding_window_inference", _recording_window(calls, "cpu"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with pytest.raises(torch.OutOfMemoryError):
        predict_logits(_SignPair(), torch.ones(1, 1, 8, 8, 8), WindowSettings((8, 8, 8), accumulate="cpu"))
    assert calls == [("cpu", "cpu")] and emptied == []


def test_automatic_accumulation_is_decided_from_the_device_head_volume_and_window(monkeypatch):
    asked = []
    monkeypatch.setattr(window, "accumulation_device", lambda *args: asked.append(args) or torch.device("cpu"))
    predict_logits(_Headed(), torch.ones(1, 1, 12, 10, 9), WindowSettings((8, 8, 8)))
    (device, channels, shape, roi), = asked
    assert (device, channels, tuple(shape), tuple(roi)) == (torch.device("cpu"), 2, (12, 10, 9), (8, 8, 8))
