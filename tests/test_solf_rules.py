"""SOLF rule table: defaults from TotalVibeSegmentator's QC, user overrides, clear errors."""

from __future__ import annotations

import importlib.util
import json

import pytest

from swinbob.labels import TOTALVIBE_LABELS, ids_by_name
from swinbob.solf.rules import RulesError, apply_overrides, default_rules, load_rules

ID = ids_by_name(TOTALVIBE_LABELS)


def test_defaults_follow_totalvibesegmentator_qc_expectations():
    organs = default_rules().organs
    expected = {"liver": (1, 1), "kidney_left": (1, 1), "thyroid_gland": (1, 2), "pulmonary_vein": (1, 2),
                "costal_cartilages": (4, 30), "IVD": (1, 25), "vertebra_body": (1, 25),
                "subcutaneous_fat": (1, 1000), "muscle": (1, 1000), "inner_fat": (1, 1000)}
    for name, (low, high) in expected.items():
        rule = organs[ID[name]]
        assert (rule.min_components, rule.max_components) == (low, high), name
    assert not organs[ID["unused"]].expected and organs[ID["liver"]].expected
    assert set(organs) == set(range(1, 73))


def test_overrides_by_name_id_default_and_settings(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"settings": {"mad_threshold": 3.0, "mad_floor": {"sphericity": 0.05}},
                                "default": {"min_voxels": 3},
                                "organs": {"liver": {"max_components": 2}, "64": {"min_components": 2}}}))
    rules = load_rules(path, max_rejected_fraction=0.5, mad_threshold=None)
    assert rules.settings.mad_threshold == 3.0 and rules.settings.max_rejected_fraction == 0.5
    assert rules.settings.mad_floor["sphericity"] == 0.05 and rules.settings.mad_floor["log_volume"] == 0.1
    assert rules.organs[ID["liver"]].max_components == 2 and rules.organs[ID["liver"]].min_voxels == 3
    assert rules.organs[ID["costal_cartilages"]].min_components == 2
    assert load_rules(path, mad_threshold=6.0).settings.mad_threshold == 6.0  # flags win over the file


def test_the_dumped_table_reads_back_unchanged():
    rules = default_rules()
    assert apply_overrides(rules, json.loads(json.dumps(rules.to_json()))) == rules


@pytest.mark.parametrize("overrides, message", [
    ({"organs": {"livr": {}}}, "unknown organ"),
    ({"organs": {"liver": {"max_component": 2}}}, "unknown field"),
    ({"organs": {"liver": {"max_components": 1.5}}}, "expected int"),
    ({"organs": {"liver": {"min_components": 3, "max_components": 2}}}, "min_components"),
    ({"settings": {"mad_threshold": -1.0}}, "positive"),
    ({"settings": {"mad_floor": {"volume": 0.1}}}, "mad_floor"),
    ({"thresholds": {}}, "unknown top-level"),
])
def test_invalid_rules_are_configuration_errors(overrides, message):
    with pytest.raises(RulesError, match=message):
        apply_overrides(default_rules(), overrides)


def test_broken_or_missing_rules_files(tmp_path):
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    with pytest.raises(RulesError, match="invalid JSON"):
        load_rules(bad)
    with pytest.raises(RulesError, match="not found"):
        load_rules(tmp_path / "missing.json")


@pytest.mark.skipif(importlib.util.find_spec("yaml") is not None, reason="PyYAML is installed")
def test_yaml_rules_need_pyyaml(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("settings: {mad_threshold: 3.0}\n")
    with pytest.raises(RulesError, match="PyYAML"):
        load_rules(path)
