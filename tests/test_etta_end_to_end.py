"""ETTA end to end through the evaluation engine, with an adaptation whose right answer is known.

The model is a threshold on the windowed CT whose position is set by the affine parameters of a
BatchNorm (a pure affine map in eval mode, and one of the layers ETTA tunes). The test liver's
intensity is shifted: a ramp from -30 HU to 100 HU across the organ, while the source threshold
sits at 0 HU, so the source model misses the liver's dim end. Entropy minimisation pushes the
decision boundary out of the dense liver intensities into the empty gap between body (-160 HU)
and liver, which recovers the missed voxels: the written ETTA labels, the metrics and the summary
must all show it, and the plain prediction written beside them must not.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_eval import AIR_HU, BODY_HU, NON_RAS, SHAPE, phantom_labels, rows_of, settings_for
from torch import nn

from swinbob.infer.etta import EttaConfig
from swinbob.infer.evaluate import ETTA, NO_ETTA, Case, run_evaluation
from swinbob.tasks import get_task

LIVER = 6
CT_WINDOW = (-175.0, 250.0)  # BTCV's a_min/a_max: HU -> [0, 1]


def windowed(hu: float) -> float:
    return (hu - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0])


class NormThresholdModel(nn.Module):
    """Liver where ``sharpness * (x - windowed(threshold_hu))`` > 0, the shift held by a BatchNorm's bias."""

    def __init__(self, threshold_hu: float, sharpness: float = 30.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm3d(1, eps=0.0)  # running mean 0, variance 1: y = weight * x + bias
        with torch.no_grad():
            self.norm.bias.fill_(-windowed(threshold_hu))
        self.sharpness = sharpness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 14, *x.shape[2:]), -20.0)  # other organs: never
        logits[:, 0] = 0.0
        logits[:, LIVER] = self.sharpness * self.norm(x[:, :1])[:, 0]
        return logits


def write_shifted_liver_case(folder: Path, name: str, low_hu: float, high_hu: float) -> Case:
    labels = phantom_labels(0, organs=(LIVER,))
    liver = labels == LIVER
    xs = np.flatnonzero(liver.any(axis=(1, 2)))
    ramp = np.interp(np.arange(SHAPE[0]), [xs.min(), xs.max()], [low_hu, high_hu])
    image = np.full(SHAPE, AIR_HU, np.float32)
    image[2:-2, 3:-3, 2:-2] = BODY_HU
    image[liver] = np.broadcast_to(ramp[:, None, None], SHAPE)[liver]
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, NON_RAS), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, NON_RAS), folder / f"{name}_label.nii.gz")
    return Case(name, (str(folder / f"{name}.nii.gz"),), str(folder / f"{name}_label.nii.gz"))


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("etta_e2e")
    case = write_shifted_liver_case(tmp / "data", "shifted", -30.0, 100.0)
    settings = settings_for(get_task("btcv"), tmp / "out", save_predictions=True,
                            etta=EttaConfig(steps=10, lr=0.05, windows=2))
    settings.methods = (NO_ETTA, ETTA)  # --compare_etta
    model = NormThresholdModel(threshold_hu=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = run_evaluation(model, [case], settings)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # episodic
    return case, tmp / "out", summary


def _written(out: Path, folder: str) -> np.ndarray:
    return np.asarray(nib.load(out / folder / "shifted.nii.gz").dataobj)


def test_etta_recovers_the_missed_liver_in_the_written_labels(shifted_run):
    case, out, _ = shifted_run
    truth = np.asarray(nib.load(case.label).dataobj)
    image = np.asarray(nib.load(case.image[0]).dataobj)
    plain, adapted = _written(out, "predictions_no_etta"), _written(out, "predictions")
    missed = (truth == LIVER) & (plain != LIVER)
    assert missed.sum() > 50 and np.all(image[missed] < 0.0)  # the source misses the dim end (< 0 HU)
    assert np.array_equal(adapted, truth)  # ETTA recovers it, and adds nothing outside the liver
    assert (adapted == LIVER).sum() > (plain == LIVER).sum()


def test_etta_improves_the_metrics_and_the_summary_records_why(shifted_run):
    _, out, summary = shifted_run
    liver = {r["method"]: r for r in rows_of(out) if r["class"] == "liver"}
    print(f"liver Dice no_etta {liver[NO_ETTA]['dice']} -> etta {liver[ETTA]['dice']}; "
          f"HD95 {liver[NO_ETTA]['hd95_mm']} -> {liver[ETTA]['hd95_mm']} mm")
    assert float(liver[NO_ETTA]["dice"]) < 0.95 and float(liver[ETTA]["dice"]) == 1.0
    assert float(liver[ETTA]["hd95_mm"]) == 0.0 < float(liver[NO_ETTA]["hd95_mm"])
    means = {m: summary["metrics"][m]["dice"]["overall"]["mean"] for m in (NO_ETTA, ETTA)}
    assert means[ETTA] > means[NO_ETTA] + 0.05
    record = summary["etta"]["shifted"]
    assert record["applied"] is True and record["fallback"] is None
    assert record["entropy_adapted"] < record["entropy_source"]
    assert record["foreground_adapted"] > record["foreground_source"]
    assert 0.5 < record["weight_adapted"] < 1.0
