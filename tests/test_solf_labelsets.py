"""SOLF on any label set: label tables from files, names -> left/right pairs, and synthetic cohorts in
TotalSegmentator IDs (whole-body labels, and CT with images) with injected left/right swaps and
fragments, cleaned end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from swinbob.files import read_nifti, write_nifti
from swinbob.labels import BTCV_LABELS, IGNORE_LABEL, TOTALSEGMENTATOR_LABELS, TOTALVIBE_LABELS, mirror_name, side_pairs
from swinbob.data.phantoms import btcv_case, ukbob_case
from swinbob.solf.inject import fragment, inject, swap
from swinbob.solf import labelsets
from swinbob.solf.labelsets import LabelSetError, label_set_channels, load_label_set, name_of, remap_by_name
from swinbob.solf.cli import organ_filtering_entry
from swinbob.solf.rules import RulesError, learn_component_rules, load_rules

TS = {name: i for i, name in TOTALSEGMENTATOR_LABELS.items()}


def test_totalsegmentator_preset_has_its_117_classes_and_32_left_right_pairs():
    labels = load_label_set("totalsegmentator")
    assert len(labels) == 118 and labels[1] == "spleen" and labels[26] == "vertebrae_S1"
    assert labels[50] == "vertebrae_C1" and labels[92] == "rib_left_1" and labels[117] == "costal_cartilages"
    pairs = side_pairs(labels)
    assert (TS["kidney_left"], TS["kidney_right"]) in pairs and (TS["rib_left_7"], TS["rib_right_7"]) in pairs
    # 16 paired organs + 2 paired lung lobes + 12 rib pairs; middle lobe and atrial appendage have no partner
    assert len(pairs) == 30 + 2 and all(labels[left].count("left") == 1 for left, _ in pairs)


@pytest.mark.parametrize("name, partner", [("kidney_left", "kidney_right"), ("left_lung", "right_lung"),
                                           ("rib_right_3", "rib_left_3"), ("Left-Hippocampus", "Right-Hippocampus"),
                                           ("cleft_palate", None), ("brightness", None), ("liver", None)])
def test_mirror_name_swaps_only_a_whole_word(name, partner):
    assert mirror_name(name) == partner


def test_side_pairs_are_listed_by_left_id_whatever_the_case_of_left():
    labels = {0: "background", 1: "lung_left", 2: "lung_right", 3: "Left-Hippocampus", 4: "Right-Hippocampus",
              5: "KIDNEY_RIGHT", 6: "KIDNEY_LEFT", 7: "aorta"}
    assert side_pairs(labels) == [(1, 2), (3, 4), (6, 5)]


def test_label_tables_load_from_dataset_json_decathlon_json_and_csv(tmp_path):
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidney_left": 2, "kidney_right": 3,
                                             "kidneys": [2, 3]}, "channel_names": {"0": "CT"}}))
    decathlon = tmp_path / "decathlon.json"
    decathlon.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "kidney_left", "3": "kidney_right"}}))
    table = tmp_path / "labels.csv"
    table.write_text("id,name\n1,liver\n2,kidney_left\n3,kidney_right\n")
    expected = {0: "background", 1: "liver", 2: "kidney_left", 3: "kidney_right"}
    for path in (nnunet, decathlon, table):
        assert load_label_set(path) == expected
    assert side_pairs(expected) == [(2, 3)]


@pytest.mark.parametrize("content, message", [
    ('{"labels": {"liver": 1, "spleen": 1}}', "used twice"),
    ('{"labels": {"liver": 300}}', "outside 1..254"),
    ('{"labels": {"liver": "x"}}', "not an integer label value"),
    ('{"labels": {"background": 0}}', "no labels besides background"),
    ('{"labels": {"liver": 1, "liver ": 2}}', "padded name"),
    ("[1, 2", "invalid JSON"),
])
def test_bad_label_tables_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(content)
    with pytest.raises(LabelSetError, match=message):
        load_label_set(path)
    with pytest.raises(LabelSetError, match="neither a preset"):
        load_label_set(tmp_path / "missing.json")


def test_csv_tables_need_no_header_and_skip_empty_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("1,liver\n,\n 2 , spleen \n\n3," + "a" * 1024 + "\n")  # names up to 1024 characters
    assert load_label_set(path) == {0: "background", 1: "liver", 2: "spleen", 3: "a" * 1024}


@pytest.mark.parametrize("text, message", [
    ("", "{path}: no labels besides background"),
    ("1,liver\n2\n", "{path}: row 2 needs two columns id,name, got ['2']"),
    ("id,name\nx,liver\n", "{path}: label ID 'x' is not a non-negative integer"),
    ("1,liver\n256,spleen\n", "{path}: label ID '256' outside 1..254"),
    ("1,liver\n255,spleen\n", "{path}: label ID 255 outside 1..254"),  # SOLF's ignore value
    ("1,liver\n1,spleen\n", "{path}: label ID 1 appears twice"),
    ("1,liver\n2,liver\n", "{path}: name 'liver' used by IDs 1 and 2"),
    ("1,liv\ter\n", "{path}: the name of label 1 holds non-printable characters 'liv\\ter'"),
    ("1," + "a" * 1025 + "\n", "{path}: the name of label 1 has 1025 characters (at most 1024)"),
    ("1," + "a" * 200_000 + "\n", "{path}: not a CSV label table (field larger than field limit (131072))"),
])
def test_bad_csv_label_tables_are_refused_naming_the_file_and_the_value(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelSetError) as caught:
        load_label_set(path)
    assert str(caught.value) == message.format(path=path)


@pytest.mark.parametrize("labels, expected", [
    ({"1": "liver", "2": "spleen"}, {0: "background", 1: "liver", 2: "spleen"}),  # Decathlon, background implied
    ({"liver": 1, "tumour_core": [1, 2]}, {0: "background", 1: "liver"}),  # a region's IDs are no labels
    ({"1": "BACKGROUND"}, {0: "background", 1: "BACKGROUND"}),  # names are case-sensitive
    ({"BACKGROUND": 1}, {0: "background", 1: "BACKGROUND"}),
])
def test_labels_blocks_without_background_get_it_and_regions_are_skipped(tmp_path, labels, expected):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels}))
    assert load_label_set(path) == expected
    path.write_text(json.dumps(labels))  # the mapping alone, without a "labels" field
    assert load_label_set(path) == expected


@pytest.mark.parametrize("content, message", [
    ([1, 2], "{path}: expected a non-empty 'labels' mapping"),
    ({"labels": {}}, "{path}: expected a non-empty 'labels' mapping"),
    ({"labels": {"kidneys": [1, 2]}}, "{path}: only nnU-Net regions (lists of IDs), no labels"),
    ({"labels": {"liver": "x"}}, "{path}: 'labels': 'liver' 'x' is not an integer label value"),
    ({"labels": {"liver ": 1}}, "{path}: label 1 has an empty or padded name 'liver '"),
    # a name's repr is shown whole up to 80 characters, else cut to 77 and "..."
    ({"labels": {"a" * 77 + " ": 1}}, "{path}: label 1 has an empty or padded name '" + "a" * 77 + " '"),
    ({"labels": {"a" * 78 + " ": 1}}, "{path}: label 1 has an empty or padded name '" + "a" * 76 + "..."),
])
def test_bad_json_label_tables_are_refused_naming_the_file_and_the_value(tmp_path, content, message):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    with pytest.raises(LabelSetError) as caught:
        load_label_set(path)
    assert str(caught.value) == message.format(path=path)


def test_presets_missing_and_unreadable_label_tables(tmp_path, monkeypatch):
    default = load_label_set(None)
    assert default == TOTALVIBE_LABELS and default is not TOTALVIBE_LABELS
    missing = str(tmp_path / "missing.json")
    with pytest.raises(LabelSetError) as caught:
        load_label_set(missing)
    assert str(caught.value) == f"label set {missing!r} is neither a preset (totalvibe, totalsegmentator) nor a file"
    large = tmp_path / "large.csv"
    large.write_text("1,liver\n" + "\n" * 2**21)  # 2 MiB
    monkeypatch.setenv("SWINBOB_MAX_TABLE_MB", "1")
    with pytest.raises(LabelSetError) as caught:
        load_label_set(large)
    assert str(caught.value) == f"{large}: cannot read (label table larger than 1 MiB (--max_table_mb))"

    def denied(path, what):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(labelsets, "read_bounded_text", denied)
    with pytest.raises(LabelSetError) as caught:
        load_label_set(large)
    assert str(caught.value) == f"{large}: cannot read (Permission denied)"


def test_channels_come_from_a_labels_dataset_json_only(tmp_path, monkeypatch):
    def written(name, content):
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    labels = {"background": 0, "liver": 1}
    assert label_set_channels(written("nnunet.json", {"labels": labels, "channel_names": {"1": "T2", "0": "T1"}})) == ("T1", "T2")
    assert label_set_channels(str(written("decathlon.json", {"labels": labels, "modality": {"0": "MRI"}}))) == ("MRI",)
    assert label_set_channels(written("plain.json", {"labels": labels})) is None
    assert label_set_channels(written("table.csv", "1,liver\n")) is None
    assert label_set_channels(written("broken.json", "{")) is None  # load_label_set reports it
    assert label_set_channels(None) is None and label_set_channels("totalvibe") is None
    monkeypatch.chdir(tmp_path)  # a file named like a preset: the preset wins, as in load_label_set
    written("totalsegmentator", {"labels": labels, "channel_names": {"0": "CT"}})
    assert label_set_channels("totalsegmentator") is None
    bad = written("bad.json", {"labels": labels, "channel_names": {"1": "CT"}})
    with pytest.raises(LabelSetError) as caught:
        label_set_channels(bad)
    assert str(caught.value) == f"{bad}: channel indices must run 0..0, got ['1']"


def test_remap_by_name_keeps_shared_names_and_sends_the_rest_to_background():
    source = {0: "background", 1: "liver", 2: "spleen", 3: "intestine"}
    target = {0: "background", 5: "spleen", 7: "liver"}
    label = np.array([[0, 1, 2, 3, IGNORE_LABEL]], dtype=np.uint8)
    remapped = remap_by_name(label, source, target)
    assert remapped.tolist() == [[0, 7, 5, 0, IGNORE_LABEL]] and remapped.dtype == np.uint8
    assert name_of(target, 7) == "liver" and name_of(target, 3) == "3"


def test_rules_files_name_organs_of_the_label_set(tmp_path):
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"organs": {"rib_left_3": {"max_components": 2, "learn_components": False}}}))
    rules = load_rules(rules_file, load_label_set("totalsegmentator"))
    assert rules.organs[TS["rib_left_3"]].max_components == 2 and rules.organs[TS["liver"]].learn_components
    rules_file.write_text(json.dumps({"organs": {"intestine": {"max_components": 2}}}))  # a TotalVibe name
    with pytest.raises(RulesError, match="unknown organ 'intestine'"):
        load_rules(rules_file, load_label_set("totalsegmentator"))


# ---------------------------------------------------------------------------------------------
# End to end: a synthetic CT cohort in TotalSegmentator IDs, cleaned with --labels dataset.json.

NUM_CASES, SHAPE, SWAPS, FRAGMENTS = 30, (64, 64, 80), range(0, 6), range(6, 12)


def _ts_case(index: int, rng: np.random.Generator, kind: str | None):
    """(case id, TotalSegmentator label map, affine, injected TotalSegmentator IDs)."""
    case = ukbob_case(index, seed=11, shape=SHAPE)
    label, primary = case.label, ()
    if kind is not None:
        for _ in range(20):  # an organ TotalSegmentator also has (TotalVibe's intestine, fat... it has not)
            label, injection = inject(case.case_id, case.label, case.affine, kind, rng)
            names = [TOTALVIBE_LABELS[o] for o in injection.primary]
            if all(n in TS for n in names):
                primary = tuple(TS[n] for n in names)
                break
        assert primary, "no injectable organ"
    return case.case_id, remap_by_name(label, TOTALVIBE_LABELS, TOTALSEGMENTATOR_LABELS), case.affine, primary


@pytest.fixture(scope="module")
def ts_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("solf_ts")
    rng = np.random.default_rng(5)
    injected = {}
    for index in range(NUM_CASES):
        kind = "swap" if index in SWAPS else "fragment" if index in FRAGMENTS else None
        case_id, label, affine, primary = _ts_case(index, rng, kind)
        write_nifti(root / "labels" / f"{case_id}.nii.gz", label, affine)
        if kind:
            injected[case_id] = (kind, primary)
    labels_file = root / "dataset.json"  # an nnU-Net v2 dataset.json labels block, names -> IDs
    labels_file.write_text(json.dumps({"labels": {n: i for i, n in TOTALSEGMENTATOR_LABELS.items()}}))
    out = root / "out"
    code = organ_filtering_entry(["--input_dir", str(root / "labels"), "--output_dir", str(out), "--labels",
                                  str(labels_file), "--workers", "1", "--no_figure", "--log_level", "WARNING"])
    with open(out / "report" / "decisions.csv", newline="") as handle:
        rows = {(r["case_id"], int(r["label"])): r for r in csv.DictReader(handle)}
    return code, out, rows, injected


def test_totalsegmentator_cohort_runs_with_its_own_names(ts_run):
    code, out, rows, _ = ts_run
    assert code == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"]["117"] == "costal_cartilages" and len(dataset["labels"]) == 118
    names = {r["name"] for r in rows.values()}
    assert "vertebrae_L1" not in names and {"kidney_left", "iliopsoas_right", "autochthon_left"} <= names
    assert all(TOTALSEGMENTATOR_LABELS[label] == r["name"] for (_, label), r in rows.items())


def test_injected_swaps_and_fragments_are_found(ts_run):
    _, out, rows, injected = ts_run
    for case_id, (kind, primary) in injected.items():
        for organ in primary:
            row = rows[(case_id, organ)]
            reasons = set(row["reasons"].split(";"))
            if kind == "swap":  # nothing else wrong with either partner: repaired by exchanging the labels
                assert (row["decision"], reasons) == ("cleaned", {"swapped"}), (case_id, row)
            else:
                assert row["decision"] != "kept" and reasons & {"fragments", "fragmented"}, (case_id, row)
    # The fragments were learned as such: the organ is one piece in the cohort, so cleaning keeps one.
    case_id, (_, (organ,)) = next((c, v) for c, v in injected.items() if v[0] == "fragment")
    if rows[(case_id, organ)]["decision"] == "cleaned":
        cleaned, _ = read_nifti(out / "labelsTr" / f"{case_id}.nii.gz", ndim=3)
        assert np.count_nonzero(cleaned == IGNORE_LABEL) > 0


def test_clean_scans_of_the_totalsegmentator_cohort_are_hardly_touched(ts_run):
    _, _, rows, injected = ts_run
    clean = [r for (case_id, _), r in rows.items() if case_id not in injected]
    rejected = sum(r["decision"] == "rejected" for r in clean)
    assert len(clean) > 18 * 30 and rejected / len(clean) <= 0.02


def test_component_counts_are_learned_from_the_cohort_and_leave_the_rest_of_the_rule_alone(tmp_path):
    labels = {0: "background", 1: "liver", 2: "vessels", 3: "rare"}
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps({"organs": {"liver": {"min_largest_share": 0.9}}}))
    rules = load_rules(rules_file, labels)
    rows = np.array([1] * 30 + [2] * 30 + [3] * 5)
    components = np.array([1] * 28 + [3, 2] + [4, 5, 3] * 10 + [7] * 5)
    learned = learn_component_rules(rules, rows, components).organs
    assert (learned[1].max_components, learned[1].min_largest_share) == (1, 0.9)  # one piece: fragments cleaned
    assert (learned[2].min_components, learned[2].max_components) == (1, 12)  # median 4 -> up to 3x
    assert learned[3] == rules.organs[3]  # 5 scans < min_population: not learned


BTCV_TO_TS = {"right_kidney": "kidney_right", "left_kidney": "kidney_left", "right_adrenal_gland": "adrenal_gland_right",
              "left_adrenal_gland": "adrenal_gland_left", "portal_and_splenic_veins": "portal_vein_and_splenic_vein"}


def test_a_ct_cohort_in_totalsegmentator_ids_with_its_ct_images(tmp_path):
    """BTCV-like CT phantoms (HU images, 13 abdominal organs) relabelled with TotalSegmentator IDs:
    kidney swaps and organ fragments are found, and the CT intensities are measured."""
    rng = np.random.default_rng(9)
    source = {i: BTCV_TO_TS.get(n, n) for i, n in BTCV_LABELS.items()}
    injected = {}
    for index in range(24):
        case = btcv_case(index, seed=4)
        label = remap_by_name(case.label, source, TOTALSEGMENTATOR_LABELS)
        if index < 3:
            label = swap(label, TS["kidney_left"], TS["kidney_right"])
            injected[case.case_id] = ("swap", (TS["kidney_left"], TS["kidney_right"]))
        elif index < 6:
            organ = TS[("liver", "spleen", "stomach")[index - 3]]
            label = fragment(label, organ, case.affine, rng)
            injected[case.case_id] = ("fragment", (organ,))
        write_nifti(tmp_path / "labels" / f"{case.case_id}.nii.gz", label, case.affine)
        write_nifti(tmp_path / "images" / f"{case.case_id}_0000.nii.gz", case.image[0], case.affine)
    assert organ_filtering_entry(["--input_dir", str(tmp_path / "labels"), "--image_dir", str(tmp_path / "images"),
                                  "--channel_names", "CT", "--labels", "totalsegmentator", "--output_dir",
                                  str(tmp_path / "out"), "--workers", "1", "--no_figure", "--log_level", "WARNING"]) == 0
    with open(tmp_path / "out" / "report" / "decisions.csv", newline="") as handle:
        rows = {(r["case_id"], int(r["label"])): r for r in csv.DictReader(handle)}
    for case_id, (kind, organs) in injected.items():
        for organ in organs:
            row = rows[(case_id, organ)]
            expected = {"swapped"} if kind == "swap" else {"fragments", "fragmented"}
            assert row["decision"] != "kept" and set(row["reasons"].split(";")) & expected, (case_id, row)
    clean = [r for (case_id, _), r in rows.items() if case_id not in injected]
    assert sum(r["decision"] == "rejected" for r in clean) / len(clean) <= 0.02
    with open(tmp_path / "out" / "report" / "features.csv", newline="") as handle:
        liver = [float(r["mean_CT"]) for r in csv.DictReader(handle) if r["name"] == "liver"]
    assert len(liver) == 24 and 0 < np.median(liver) < 200  # soft-tissue HU
