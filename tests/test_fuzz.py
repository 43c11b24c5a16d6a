"""Property-based fuzzing (Hypothesis) of what strangers hand the toolkit: datalists, NIfTI
headers, checkpoint model configs and label maps. Every generated input must be either accepted
or refused with the toolkit's own error type (a one-line message), never an uncaught exception,
and nothing accepted may exceed the resource limits. 1,370 generated inputs per run (dataset.json
tasks, checkpoint task_specs, label tables and environment limits among them), derandomized
so CI is reproducible; the CI profile takes well under a minute."""

from __future__ import annotations

import json
import string
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults_report import record_input
from swinbob.checkpoint import CheckpointError
from swinbob.errors import ConfigError
from swinbob.infer.cli import parse_label_map
from swinbob.infer.model_loading import stored_task
from swinbob.files import NiftiError, load_nifti_header, read_nifti
from swinbob.data.dataset_task import DatasetJsonError, parse_channels, parse_labels
from swinbob.labels import IGNORE_LABEL
from swinbob.limits import LimitError, limit
from swinbob.solf.labelsets import LabelSetError, _labels_from_csv, labels_from_mapping
from swinbob.data.loaders import DatalistError, load_splits
from swinbob.model import ModelConfig
from swinbob.tasks import get_task

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("error::RuntimeWarning")]  # an overflow is a size check that wrapped
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(string.printable, max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                   st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
paths = st.one_of(st.sampled_from(["img.nii.gz", "sub/img.nii.gz", "../up.nii.gz", "/abs.nii.gz", "", "a\0b"]), json_values)
entries = st.one_of(json_values, st.fixed_dictionaries(
    {"image": st.one_of(paths, st.lists(paths, max_size=3)), "label": paths},
    optional={"fold": json_values}))
datalists = st.one_of(json_values, st.fixed_dictionaries(
    {}, optional={"training": st.one_of(json_values, st.lists(entries, max_size=4)),
                  "validation": st.one_of(json_values, st.lists(entries, max_size=4))}))

COUNTS: dict[str, int] = {}


def _count(kind: str) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + 1


@settings(FUZZ, max_examples=200)
@given(content=datalists, fold=st.one_of(st.none(), st.integers(0, 4)))
def test_any_datalist_is_loaded_or_refused_with_a_datalist_error(tmp_path_factory, content, fold):
    folder = tmp_path_factory.mktemp("fuzz_datalist", numbered=True)
    path = folder / "dataset.json"
    path.write_text(json.dumps(content))
    _count("datalist")
    try:
        train, val = load_splits(path, folder, fold)
    except DatalistError as exc:
        assert "\n" not in str(exc).split(":\n")[0]
        return
    for entry in train + val:
        assert isinstance(entry, dict) and "image" in entry


headers = st.fixed_dictionaries({
    "dims": st.lists(st.integers(-3, 70_000), min_size=1, max_size=7),
    "pixdim": st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=3, max_size=3),
    "dtype": st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.int64, np.complex64]),
    "vox_offset": st.integers(-10, 10_000),
    "data_bytes": st.integers(0, 5000),
    "suffix": st.sampled_from([".nii", ".nii.gz", ".hdr"]),
})


def _write_header(folder: Path, spec: dict) -> Path:
    header = nib.Nifti1Header() if spec["suffix"] != ".hdr" else nib.nifti1.Nifti1PairHeader()
    header.set_data_dtype(spec["dtype"])
    dim = np.zeros(8, np.int16)
    dims = spec["dims"]
    dim[0] = len(dims)
    dim[1:1 + len(dims)] = np.clip(dims, -32768, 32767)
    header["dim"] = dim
    pixdim = np.ones(8, np.float32)
    pixdim[1:4] = spec["pixdim"]
    header["pixdim"] = pixdim
    header["vox_offset"] = spec["vox_offset"] if spec["suffix"] != ".hdr" else 0
    path = folder / f"fuzz{spec['suffix']}"
    data = header.binaryblock + b"\0" * 4 + bytes(spec["data_bytes"])
    if spec["suffix"] == ".nii.gz":
        import gzip
        path.write_bytes(gzip.compress(data))
    elif spec["suffix"] == ".hdr":
        path.write_bytes(header.binaryblock)
        path.with_suffix(".img").write_bytes(bytes(spec["data_bytes"]))
    else:
        path.write_bytes(data)
    return path


@settings(FUZZ, max_examples=220)
@given(spec=headers)
def test_any_nifti_header_is_read_or_refused_with_a_nifti_error(tmp_path_factory, spec):
    path = _write_header(tmp_path_factory.mktemp("fuzz_nifti", numbered=True), spec)
    _count("nifti")
    try:
        img = load_nifti_header(path)
    except NiftiError as exc:
        assert str(path) in str(exc)
        return
    assert int(np.prod(img.shape, dtype=object)) <= limit("max_voxels")
    try:
        data, _ = read_nifti(path, ndim=None)
    except NiftiError as exc:
        assert str(path) in str(exc)
        return
    assert data.nbytes <= spec["data_bytes"] + 8 * 4 or data.size <= 4096


configs = st.dictionaries(
    st.sampled_from(["in_channels", "out_channels", "feature_size", "roi", "dropout_path_rate", "use_checkpoint",
                     "use_v2", "spatial_dims", "norm_name", "unknown"]),
    st.one_of(json_values, st.integers(-5, 5000), st.lists(st.integers(-64, 4096), max_size=4),
              st.sampled_from(["instance", "batch", "nonsense"])),
    max_size=10)


@settings(FUZZ, max_examples=120)
@given(stored=configs)
def test_any_stored_model_config_is_accepted_within_limits_or_refused(stored):
    _count("checkpoint config")
    fields = {"in_channels": 1, "out_channels": 2, "feature_size": 12, **stored}
    try:
        config = ModelConfig.from_dict(fields)
    except ValueError:
        return
    assert 0 < config.feature_size <= limit("max_feature_size") and config.feature_size % 12 == 0
    assert 1 <= config.in_channels <= limit("max_channels") and 1 <= config.out_channels <= limit("max_channels")
    assert all(r > 0 and r % 32 == 0 for r in config.roi) and len(config.roi) == 3


@settings(FUZZ, max_examples=80)
@given(text=st.one_of(st.text(max_size=40), json_values.map(json.dumps),
                      st.dictionaries(st.text(max_size=4), json_scalars, max_size=5).map(json.dumps)))
def test_any_label_map_is_parsed_to_integers_or_refused(text):
    _count("label map")
    try:
        mapping = parse_label_map(text, get_task("btcv"), 73)
    except ConfigError:
        return
    if mapping is not None:
        assert all(type(k) is int and type(v) is int for k, v in mapping.items())


task_specs = st.dictionaries(
    st.sampled_from(["task", "task_spec", "label_map", "in_channels", "intensity", "spacing", "name", "channel_names",
                     "regions", "mode", "roi"]),
    st.one_of(json_values, st.sampled_from(["btcv", "ukbob", "brats"]),
              st.fixed_dictionaries({}, optional={"name": json_values, "label_map": json_values, "intensity": json_values,
                                                  "channel_names": json_values, "mode": json_values})),
    max_size=6)


@settings(FUZZ, max_examples=100)
@given(stored=task_specs)
def test_any_stored_task_is_rebuilt_or_refused_with_a_checkpoint_error(stored):
    _count("stored task")
    try:
        stored_task(stored)
    except CheckpointError:
        pass


label_values = st.one_of(st.integers(-3, 300), st.sampled_from([0, 1, 254, 255, 256, 10**9, 2**63]), st.booleans(),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(string.digits + "-.e", max_size=6),
                         st.lists(st.integers(-1, 300), max_size=3), json_values)
label_blocks = st.one_of(
    json_values,
    st.dictionaries(st.text(string.ascii_letters + "_", min_size=1, max_size=10), label_values, max_size=6),
    st.dictionaries(st.integers(0, 300).map(str), st.one_of(st.text(max_size=12), json_values), max_size=6))


@settings(FUZZ, max_examples=200)
@given(labels=label_blocks, order=st.one_of(st.nothing(), json_values, st.lists(label_values, max_size=3)),
       channels=st.one_of(json_values, st.dictionaries(st.integers(-1, 3).map(str), st.text(max_size=6), max_size=3)))
def test_any_dataset_json_task_is_parsed_within_limits_or_refused(labels, order, channels):
    _count("dataset.json task")
    content = {"labels": labels, "channel_names": channels, **({"regions_class_order": order} if order is not None else {})}
    try:
        parsed = parse_labels(content)
        parse_channels(content)
    except DatasetJsonError as exc:
        assert "\n" not in str(exc)
        return
    label_map = parsed["label_map"]
    assert all(type(k) is int and 0 <= k for k in label_map) and 0 in label_map
    assert IGNORE_LABEL not in label_map or parsed["ignore_value"] == IGNORE_LABEL
    assert max(label_map) + 1 <= limit("max_channels") and all(type(o) is int for o in parsed["region_labels"])


spec_fields = st.sampled_from(["name", "channel_names", "label_map", "mode", "spacing", "intensity", "roi", "regions",
                               "region_labels", "ignore_value", "infer_overlap"])
spec_values = st.one_of(json_values, st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
                        st.fixed_dictionaries({"kind": st.sampled_from(["window", "zscore_nonzero", "evil", ""])},
                                              optional={"a_min": label_values, "a_max": label_values, "b_min": label_values}),
                        st.dictionaries(st.integers(0, 2**31).map(str), st.text(max_size=8), max_size=4))


@settings(FUZZ, max_examples=200)
@given(changes=st.dictionaries(spec_fields, spec_values, max_size=3))
def test_any_checkpoint_task_spec_is_a_valid_task_or_a_checkpoint_error(changes):
    _count("checkpoint task_spec")
    spec = {**get_task("btcv").to_dict(), **changes}
    try:
        task = stored_task({"task_spec": spec})
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    task.check()  # what was accepted is a task a run could use, sized within the limits
    assert task.out_channels <= limit("max_channels") and all(0.01 <= s <= 100 for s in task.spacing)


@settings(FUZZ, max_examples=150)
@given(block=label_blocks, csv_text=st.text(string.printable + "\0é", max_size=60), as_csv=st.booleans())
def test_any_label_table_is_a_solf_table_or_a_label_set_error(block, csv_text, as_csv):
    _count("label table")
    try:
        table = _labels_from_csv(csv_text, "t.csv") if as_csv else labels_from_mapping(block, "t.json")
    except LabelSetError as exc:
        assert "\n" not in str(exc)
        return
    assert table[0] == "background" and all(type(k) is int and 0 <= k < IGNORE_LABEL for k in table)
    assert all(isinstance(n, str) and n and len(n) <= 1024 and n.isprintable() for k, n in table.items() if k)


@settings(FUZZ, max_examples=100)
@given(value=st.one_of(st.text(max_size=8), st.integers(-10, 10**12).map(str), st.floats().map(str)))
def test_any_environment_limit_is_a_whole_number_or_an_error_naming_the_variable(value):
    _count("environment limit")
    with pytest.MonkeyPatch.context() as patch:
        try:
            patch.setenv("SWINBOB_MAX_VOXELS", value)
        except ValueError:  # a NUL byte cannot be in the environment at all
            return
        try:
            got = limit("max_voxels")
        except LimitError as exc:
            assert "SWINBOB_MAX_VOXELS" in str(exc)
            return
    assert type(got) is int and got >= 1


def test_fuzz_inputs_are_counted_in_the_fault_report():
    """Runs last in this module: one report row per fuzzed consumer, with the count generated."""
    if not COUNTS:
        pytest.skip("the fuzz tests did not run in this run")
    for kind, count in sorted(COUNTS.items()):
        record_input("fuzzed (Hypothesis)", f"{count} generated {kind}s", "none raised an uncaught exception")
    assert sum(COUNTS.values()) >= 500 or len(COUNTS) < 9

