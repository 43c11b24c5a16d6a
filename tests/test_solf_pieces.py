"""SOLF on real-anatomy label sets: pieces of a structure, their side of the midline, what natural
extra pieces look like, and single-channel images named like their labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from swinbob.labels import IGNORE_LABEL
from swinbob.solf.cases import SINGLE_CHANNEL, find_image_channels, infer_channels
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.decide import CLEANED, KEPT, REJECTED, decide
from swinbob.solf.features import measure_scan
from swinbob.solf.outputs import clean_label
from swinbob.solf.rules import apply_overrides, default_rules
from swinbob.solf.store import build_table
from swinbob.tasks import UKBOB_CHANNELS

BRAIN = {1: "gm_left", 2: "gm_right", 3: "wm_left", 4: "wm_right"}
ID = {name: label for label, name in BRAIN.items()}
# RAS, 2 mm: world x = 2 i - 40, so the midline x = 0 lies between i = 19 and i = 20 and the
# subject's left hemisphere (x < 0) is at small i.
AFFINE = np.array([[2.0, 0, 0, -39.0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
SHAPE = (40, 40, 24)


def _brain(rng: np.random.Generator, natural_pieces: bool) -> np.ndarray:
    """Two hemispheres: a white-matter box in a grey-matter shell each; with ``natural_pieces`` a
    few small grey-matter pieces one voxel off the shell (as thin cortex breaks up at coarse
    resolution), of random size and place."""
    label = np.zeros(SHAPE, np.uint8)
    shift = rng.integers(0, 2, 3)
    for side, (i0, i1) in (("left", (2, 19)), ("right", (21, 38))):
        j, k = 3 + shift[1], 2 + shift[2]
        label[i0:i1, j:j + 18, k:k + 18] = ID[f"gm_{side}"]
        label[i0 + 3:i1 - 3, j + 3:j + 15, k + 3:k + 15] = ID[f"wm_{side}"]
        if natural_pieces:
            for _ in range(rng.integers(1, 3)):
                i, k = rng.integers(i0 + 1, i1 - 3), rng.integers(4, 18)
                size = rng.integers(1, 3, 3)
                label[i:i + size[0], 0:size[1], k:k + size[2]] = ID[f"gm_{side}"]  # j = 0..1: one voxel gap or more
    return label


def _island(label: np.ndarray) -> None:
    """A piece of wm_left pasted inside the right hemisphere's white matter."""
    label[26:30, 9:13, 9:13] = ID["wm_left"]


def _far_fragment(label: np.ndarray) -> None:
    """A piece of gm_left far from the left hemisphere's grey matter (15 voxels in front of it)."""
    label[2:10, 36:38, 12:20] = ID["gm_left"]


def _cohort(edits: dict[int, object], n: int = 30) -> tuple[list[dict], list[np.ndarray]]:
    rng = np.random.default_rng(4)
    records, labels = [], []
    for i in range(n):
        label = _brain(rng, natural_pieces=i % 3 != 0)
        if i in edits:
            edits[i](label)
        organs, pieces = measure_scan(label, AFFINE)
        records.append({"case_id": f"sub{i:03d}", "status": "ok", "fingerprint": "-", "organs": organs, "pieces": pieces})
        labels.append(label)
    return records, labels


def _brute_gap(mask_a: np.ndarray, mask_b: np.ndarray, spacing: np.ndarray) -> float:
    a, b = np.argwhere(mask_a) * spacing, np.argwhere(mask_b) * spacing
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def test_pieces_are_listed_with_their_number_size_centroid_and_gap_to_the_main_body():
    label = np.zeros((20, 16, 12), np.uint8)
    label[2:10, 2:10, 2:8] = 7   # main body, 384 voxels
    label[13:15, 3:5, 3:5] = 7   # piece of 8 voxels, 4 voxels along i from the body
    label[4:5, 13:14, 9:11] = 7  # piece of 2 voxels off a corner
    label[0:3, 14:16, 0:2] = 9   # another organ: not a piece of 7
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 2.0)
    organs, pieces = measure_scan(label, affine)
    assert organs["n_components"][organs["label"].index(7)] == 3
    components, _ = ndimage.label(label[ndimage.find_objects(label)[6]] == 7, structure=np.ones((3, 3, 3)))
    box = ndimage.find_objects(label)[6]
    spacing = np.array([1.5, 2.0, 3.0])
    main = label == 7
    main[13:15], main[:, 13:14] = False, False
    assert pieces["label"] == [7, 7]
    for piece, count, cx, gap in zip(pieces["piece"], pieces["voxel_count"], pieces["centroid_x"], pieces["gap_mm"]):
        mask = np.zeros_like(main)
        mask[box] = components == piece
        assert count == mask.sum()
        assert cx == pytest.approx(np.argwhere(mask)[:, 0].mean() * 1.5 + 10.0)
        assert gap == pytest.approx(_brute_gap(main, mask, spacing))
    assert sorted(pieces["voxel_count"]) == [2, 8]


def test_single_component_organs_have_no_pieces():
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:4, 1:4, 1:4] = 3
    assert measure_scan(label, np.eye(4))[1]["label"] == []


def test_wrong_side_island_is_cleaned_and_natural_pieces_are_kept():
    records, labels = _cohort({5: _island, 8: _island, 11: _far_fragment})
    table = build_table(records)
    decisions = decide(table, default_rules(BRAIN))
    rows = {(table.case_ids[c], BRAIN[int(lab)]): r for r, (c, lab) in
            enumerate(zip(table.columns["case_index"], table.columns["label"]))}
    for case in ("sub005", "sub008"):  # wm_left has several pieces there whatever its count
        row = rows[(case, "wm_left")]
        assert decisions.decision[row] == CLEANED and "wrong_side_island" in decisions.reasons[row]
    row = rows[("sub011", "gm_left")]
    assert decisions.decision[row] == CLEANED and "fragments" in decisions.reasons[row]
    edited = {("sub005", "wm_left"), ("sub008", "wm_left"), ("sub011", "gm_left")}
    clean = [r for key, r in rows.items() if key not in edited]
    assert sum(decisions.decision[r] != KEPT for r in clean) <= 0.05 * len(clean)
    assert not (decisions.decision == REJECTED).any()
    # the cleaned map loses exactly the island; the natural pieces of the clean structures stay
    pieces = decisions.pieces
    case = table.case_ids.index("sub005")
    drop = {int(lab): tuple(table.pieces["piece"][(table.pieces["case_index"] == case) & pieces.drop
                                               & (table.pieces["label"] == lab)]) for lab in BRAIN}
    cleaned = clean_label(labels[case], (), {}, {k: v for k, v in drop.items() if v})
    island = np.zeros(SHAPE, bool)
    island[26:30, 9:13, 9:13] = True
    assert (cleaned[island] == IGNORE_LABEL).all()
    assert np.array_equal(cleaned[~island], labels[case][~island])


def test_a_midline_from_swapped_pairs_is_not_moved():
    """A scan whose white matter is swapped left/right keeps its midline, and its grey-matter
    pieces near the medial surface are not islands."""
    def swap(label):
        left, right = label == ID["wm_left"], label == ID["wm_right"]
        label[left], label[right] = ID["wm_right"], ID["wm_left"]
    records, _ = _cohort({3: swap})
    table = build_table(records)
    decisions = decide(table, default_rules(BRAIN))
    assert decisions.pieces.midline_x[3] == pytest.approx(decisions.pieces.midline_x[4], abs=2.0)
    assert not decisions.pieces.wrong_side.any()


def test_without_learned_pieces_every_extra_piece_is_a_fragment():
    """Rules that switch learning off fall back to the component count (one): every piece is cleaned."""
    from swinbob.solf.rules import apply_overrides
    records, _ = _cohort({})
    table = build_table(records)
    rules = apply_overrides(default_rules(BRAIN), {"default": {"learn_pieces": False, "learn_components": False}})
    decisions = decide(table, rules)
    several = table.columns["n_components"] > 1
    assert several.any() and (decisions.decision[several] == CLEANED).all()
    learned = decide(table, default_rules(BRAIN))
    assert (learned.decision[several] == KEPT).mean() >= 0.95


def test_clean_label_drops_numbered_pieces_and_keeps_the_largest():
    label = np.zeros((10, 10, 10), np.uint8)
    label[0:2, 0:2, 0:2] = 5   # component 1 in scan order (C order of the indices)
    label[0:1, 8:10, 8:10] = 5  # component 2
    label[4:9, 4:9, 4:9] = 5   # component 3, the largest
    out = clean_label(label, (), {}, {5: (2,)})
    assert (out[0:1, 8:10, 8:10] == IGNORE_LABEL).all() and (out[0:2, 0:2, 0:2] == 5).all()
    assert (out[4:9, 4:9, 4:9] == 5).all()
    both = clean_label(label, (), {5: 1}, {5: (2,)})
    assert (both == IGNORE_LABEL).sum() == 8 + 4


@pytest.mark.parametrize(("names", "expected"), [
    ({"sub0.nii.gz", "sub1.nii.gz"}, (SINGLE_CHANNEL,)),
    ({"sub0_0000.nii.gz", "sub1_0000.nii.gz"}, (SINGLE_CHANNEL,)),
    ({f"sub0_{c}.nii.gz" for c in UKBOB_CHANNELS}, UKBOB_CHANNELS),
    ({f"sub0_{i:04d}.nii" for i in range(4)}, UKBOB_CHANNELS),
    ({"other.nii.gz"}, UKBOB_CHANNELS),
])
def test_channels_are_inferred_from_the_image_folder(names, expected):
    assert infer_channels(names, ["sub0", "sub1"], UKBOB_CHANNELS) == expected


def test_one_named_channel_is_also_found_under_the_labels_own_name(tmp_path):
    assert find_image_channels({"sub0.nii"}, tmp_path, "sub0", ("T1",)) == (str(tmp_path / "sub0.nii"),)
    assert find_image_channels({"sub0_T1.nii.gz", "sub0.nii"}, tmp_path, "sub0", ("T1",)) == (str(tmp_path / "sub0_T1.nii.gz"),)
    with pytest.raises(FileNotFoundError, match="sub0.nii.gz"):
        find_image_channels({"sub1.nii.gz"}, tmp_path, "sub0", ("T1",))
    with pytest.raises(FileNotFoundError):  # several channels never take the bare name
        find_image_channels({"sub0.nii.gz"}, tmp_path, "sub0", ("T1", "T2"))


@pytest.mark.parametrize("declare", [False, True])
def test_organ_filtering_finds_single_channel_images_named_like_the_labels(tmp_path, declare):
    """``--labels dataset.json --image_dir`` with ``imagesTr/sub000.nii.gz`` beside
    ``labelsTr/sub000.nii.gz`` and no ``--channel_names``: every scan is measured with its image,
    the island is cleaned, and the datalist names the channel (dataset.json's own, else "image")."""
    _, labels = _cohort({2: _island}, n=22)
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr").mkdir()
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        nib.save(nib.Nifti1Image(label, AFFINE), tmp_path / "labelsTr" / f"sub{i:03d}.nii.gz")
        image = (label * 40.0 + rng.normal(0, 5, label.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(image, AFFINE), tmp_path / "imagesTr" / f"sub{i:03d}.nii.gz")
    content = {"labels": {"background": 0, **ID}, "file_ending": ".nii.gz"}
    if declare:
        content["channel_names"] = {"0": "T1"}
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    out = tmp_path / "out"
    code = organ_filtering_entry(["--input_dir", str(tmp_path / "labelsTr"), "--image_dir", str(tmp_path / "imagesTr"),
                                  "--labels", str(tmp_path / "dataset.json"), "--output_dir", str(out),
                                  "--workers", "1", "--no_figure"])
    assert code == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["scans"]["failed"] == 0 and summary["scans"]["measured"] == 22
    datalist = json.loads((out / "dataset.json").read_text())
    assert datalist["modality"] == {"0": "T1" if declare else SINGLE_CHANNEL}
    entry = next(e for e in datalist["training"] + datalist["validation"] if e["label"].endswith("sub002.nii.gz"))
    assert Path(entry["image"][0]).name == "sub002.nii.gz" and "imagesTr" in entry["image"][0]
    cleaned = np.asarray(nib.load(out / "labelsTr" / "sub002.nii.gz").dataobj)
    island = np.zeros(SHAPE, bool)
    island[26:30, 9:13, 9:13] = True
    assert np.array_equal(cleaned == IGNORE_LABEL, island)


def test_a_structure_that_leaked_into_its_neighbour_stands_out_by_its_share_of_the_scan():
    """wm_left takes half its volume from the surrounding gm_left: its absolute volume is within the
    population's spread floor (z < 4.5), its share of the scan's labelled volume is not."""
    def leak(label):
        wm = np.argwhere(label == ID["wm_left"])
        grown = ndimage.binary_dilation(label == ID["wm_left"], iterations=2) & (label == ID["gm_left"])
        extra = np.argwhere(grown)[: wm.shape[0] // 2]
        label[tuple(extra.T)] = ID["wm_left"]
    records, _ = _cohort({6: leak})
    table = build_table(records)
    decisions = decide(table, default_rules(BRAIN))
    row = next(r for r, (c, lab) in enumerate(zip(table.columns["case_index"], table.columns["label"]))
               if table.case_ids[c] == "sub006" and lab == ID["wm_left"])
    assert decisions.decision[row] == REJECTED and "outlier_log_volume_share" in decisions.reasons[row].split(";")
    assert abs(decisions.zscores["log_volume"][row]) < 4.5


def test_one_error_does_not_exclude_a_scan_of_a_small_label_set():
    """A swap rejects two of four structures (50 %): the scan stays, its two correct structures kept;
    a scan with three rejected structures is left out. TotalVibeSegmentator's default is unchanged."""
    def swap(label):
        left, right = label == ID["gm_left"], label == ID["gm_right"]
        label[left], label[right] = ID["gm_right"], ID["gm_left"]

    def three(label):
        swap(label)
        label[label == ID["wm_left"]] = 0
        label[6:8, 6:8, 6:8] = ID["wm_left"]
    records, _ = _cohort({4: swap, 7: three})
    table = build_table(records)
    decisions = decide(table, apply_overrides(default_rules(BRAIN), {"settings": {"repair_swaps": False}}))
    assert decisions.scan_rejected_fraction[4] == 0.5 and not decisions.scan_excluded[4]
    assert decisions.scan_rejected_fraction[7] == 0.75 and decisions.scan_excluded[7]
    assert decisions.scan_excluded.sum() == 1
    assert default_rules().settings.min_rejected_to_exclude == 1
