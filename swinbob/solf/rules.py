"""SOLF pass 2 configuration: organ-specific rules and population-outlier settings.

The defaults are a readable table (:data:`COMPONENT_RANGES`) built from TotalVibeSegmentator's
own quality-control expectations (DESIGN.md §6): one connected component for most organs, up to
two for the thyroid (two lobes) and the pulmonary veins, 4–30 costal cartilages, 1–25 IVDs and
vertebral bodies, up to 1000 for the fat and muscle classes. The ranges for the other
many-piece classes (posterior vertebral elements, intestine, bone_other) are our choice.

Users override any of it with a JSON file (YAML when PyYAML is installed)::

    {"settings": {"mad_threshold": 4.0, "max_rejected_fraction": 0.3},
     "default":  {"min_voxels": 20},
     "organs":   {"liver": {"max_components": 2}, "64": {"min_components": 2}}}

Organs are named by their name in the label set (``--labels``) or by ID; unknown names or fields
are errors, so a typo never silently leaves a default in place.

Other label sets (``--labels``): SOLF has no organ table for them, so every organ starts with
``learn_components``: its expected connected-component count is learned from the cohort
(:func:`learn_component_rules`), and with ``learn_pieces``: what its natural extra pieces look
like (size share, gap to the main body) is learned too, so that a thin structure that often
comes in several pieces (cortex) keeps them and only pieces unlike them are cleaned
(:mod:`swinbob.solf.decide`). A rules file can still set any organ's range by name. ``organ_filtering.py --dump_rules`` prints the
complete effective table in this format.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swinbob.files import read_bounded_text
from swinbob.labels import TOTALVIBE_LABELS
from swinbob.solf.labelsets import is_totalvibe

OUTLIER_FEATURES = ("log_volume", "log_surface", "sphericity", "eccentricity", "log_volume_share")
"""Features tested against the population (log scale for the size-like ones). ``log_volume_share``
is the organ's share of all labelled volume of its scan: the subject's size cancels out, so an
organ that leaked into its neighbours (the scan's labelled volume unchanged) stands out more
clearly than in its absolute volume, which varies with body size. It is tested for organs with
``check_volume_share`` (label sets given with ``--labels``; TotalVibeSegmentator's table keeps its
four shape features)."""

EXTRA_FLOORS = ("position_mm", "piece_log_share", "piece_gap_mm")
"""MAD floors besides the shape features: organ position, and the two features of extra pieces."""

COMPONENT_RANGES: dict[str, tuple[int, int]] = {
    "thyroid_gland": (1, 2),
    "pulmonary_vein": (1, 2),
    "costal_cartilages": (4, 30),
    "IVD": (1, 25),
    "vertebra_body": (1, 25),
    "vertebra_posterior_elements": (1, 25),
    "intestine": (1, 100),
    "bone_other": (1, 100),
    "subcutaneous_fat": (1, 1000),
    "muscle": (1, 1000),
    "inner_fat": (1, 1000),
}
"""Expected connected-component range per organ; every organ not listed expects exactly one."""

METHODS = ("ours", "paper", "both")
"""Decision rules: ours (rules + MAD z-scores), the paper's percentile vote, or either flagging."""

NOT_EXPECTED = ("unused",)
"""Label names that should never occur in a TotalVibeSegmentator output (ID 20)."""


class RulesError(ValueError):
    """An invalid rules file or setting (a configuration error: the run stops)."""


@dataclass(frozen=True)
class OrganRule:
    """What is expected of one organ in one scan.

    ``max_components`` is the number of components kept when cleaning: extra (smaller) ones are
    fragments. A single-component organ whose largest component holds at most
    ``min_largest_share`` of its voxels is not "one organ plus debris" and is rejected instead.
    """

    min_components: int = 1
    max_components: int = 1
    min_voxels: int = 10
    min_largest_share: float = 0.5
    check_shape: bool = True
    check_position: bool = True
    expected: bool = True
    learn_components: bool = False
    learn_pieces: bool = False
    check_volume_share: bool = False


@dataclass(frozen=True)
class Settings:
    """Population and scan-level thresholds shared by all organs.

    Robust z-scores are ``0.6745 (x - median) / MAD``; ``mad_floor`` bounds the MAD from below
    per feature so that a very homogeneous population does not turn noise into outliers
    (log-volume 0.1 ≈ 10 % volume, positions in mm). ``method`` chooses the decision rule
    (``ours``, ``paper``: the UKBOB paper's two-of-three percentile vote with ``epsilon``, or
    ``both``; see :mod:`swinbob.solf.paper`). ``piece_threshold`` bounds the sum of an extra
    piece's robust z-scores of size (share of its organ) and gap to the main body against the
    cohort's pieces of that organ (``learn_pieces`` organs): natural pieces are small or close, a
    piece that is both larger and farther than them, or extremely either, is a fragment to clean.
    A scan is excluded when more than ``max_rejected_fraction`` of its organs are rejected and at
    least ``min_rejected_to_exclude``: label sets given with ``--labels`` default to 3, because one
    segmentation error often rejects two structures (a swap both partners, a leak the neighbour it
    emptied), which in a four-structure set would otherwise drop the scan's correct ones with it.

    With ``repair_swaps`` a left/right pair found inverted as a whole, with nothing else wrong with
    either partner, gets its two labels exchanged (the segmentation is right, only the names are
    crossed) instead of being ignored (:mod:`swinbob.solf.outputs`).
    """

    method: str = "ours"
    epsilon: float = 2.0
    mad_threshold: float = 4.5
    position_threshold: float = 4.5
    piece_threshold: float = 6.0
    min_population: int = 20
    max_rejected_fraction: float = 0.25
    min_rejected_to_exclude: int = 1
    repair_swaps: bool = True
    mad_floor: dict[str, float] = field(default_factory=lambda: {
        "log_volume": 0.1, "log_surface": 0.1, "sphericity": 0.03, "eccentricity": 0.03, "position_mm": 3.0,
        "piece_log_share": 0.5, "piece_gap_mm": 3.0,
        "log_volume_share": 0.05})


@dataclass(frozen=True)
class RuleSet:
    """Settings plus one :class:`OrganRule` per label ID of the label set ``labels``."""

    settings: Settings
    organs: dict[int, OrganRule]
    labels: dict[int, str] = field(default_factory=lambda: dict(TOTALVIBE_LABELS))

    def to_json(self) -> dict:
        """The complete effective rules in the override-file format (organs by name)."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "organs": {self.labels[i]: dataclasses.asdict(rule) for i, rule in sorted(self.organs.items())},
        }


def default_rules(labels: dict[int, str] | None = None) -> RuleSet:
    """The built-in rule table for ``labels`` (default TotalVibeSegmentator; see the module docstring)."""
    labels = dict(TOTALVIBE_LABELS if labels is None else labels)
    known = is_totalvibe(labels)
    organs = {}
    settings = Settings() if known else Settings(min_rejected_to_exclude=3)
    for label, name in labels.items():
        if label == 0:
            continue
        low, high = COMPONENT_RANGES.get(name, (1, 1)) if known else (1, 1)
        organs[label] = OrganRule(min_components=low, max_components=high,
                                  min_largest_share=0.5 if high == 1 else 0.0,
                                  expected=not (known and name in NOT_EXPECTED), learn_components=not known,
                                  learn_pieces=not known, check_volume_share=not known)
    return RuleSet(settings, organs, labels)


def learn_component_rules(rules: RuleSet, labels: np.ndarray, n_components: np.ndarray) -> RuleSet:
    """Resolve ``learn_components`` organs from the cohort (``labels``/``n_components``: one per row).

    An organ that is one piece in at least half of the scans (median component count 1) expects
    exactly one component, so extra pieces are fragments to clean; otherwise it is a many-piece
    structure and 1 up to three times its median count is accepted (cleaning keeps that many).
    Organs seen in fewer than ``min_population`` scans keep their rule as is.
    """
    organs = dict(rules.organs)
    order = np.argsort(labels, kind="stable")
    present, starts = np.unique(labels[order], return_index=True)
    for label, counts in zip(present.tolist(), np.split(n_components[order], starts[1:])):
        rule = organs.get(label)
        if rule is None or not rule.learn_components or counts.size < rules.settings.min_population:
            continue
        median = float(np.median(counts))
        high = 1 if median <= 1 else int(np.ceil(3 * median))
        organs[label] = dataclasses.replace(rule, min_components=1, max_components=high)
    return dataclasses.replace(rules, organs=organs)


def _organ_id(key: str, labels: dict[int, str]) -> int:
    names = {name: i for i, name in labels.items()}
    if key in names and names[key] != 0:
        return names[key]
    if key.isdigit() and int(key) in labels and int(key) != 0:
        return int(key)
    raise RulesError(f"unknown organ {key!r} in rules (use a name of the label set or an ID 1..{max(labels)})")


def _same_kind(current: object, value: object) -> bool:
    """Whether ``value`` may replace ``current`` (an int field takes no float, a bool no number)."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, int):
        return isinstance(value, int)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(current))


def _replace_checked(obj, values: dict, where: str):
    """``dataclasses.replace`` that names unknown fields and wrong types instead of ignoring them."""
    if not isinstance(values, dict):
        raise RulesError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise RulesError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(known))})")
        if not _same_kind(getattr(obj, key), value):
            raise RulesError(f"{where}.{key}: expected {type(getattr(obj, key)).__name__}, got {value!r}")
    if "mad_floor" in values:
        values = {**values, "mad_floor": {**obj.mad_floor, **values["mad_floor"]}}
    return dataclasses.replace(obj, **values)


def validate_rules(rules: RuleSet) -> RuleSet:
    """Check ranges (counts ≥ 0, min ≤ max, positive thresholds); return ``rules`` unchanged."""
    s = rules.settings
    if s.mad_threshold <= 0 or s.position_threshold <= 0 or s.piece_threshold <= 0:
        raise RulesError("mad_threshold, position_threshold and piece_threshold must be positive")
    if s.method not in METHODS:
        raise RulesError(f"unknown method {s.method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < s.epsilon < 50.0:
        raise RulesError(f"epsilon (percent in each tail) must be in (0, 50), got {s.epsilon}")
    if not 0.0 <= s.max_rejected_fraction <= 1.0:
        raise RulesError(f"max_rejected_fraction must be in [0, 1], got {s.max_rejected_fraction}")
    if s.min_rejected_to_exclude < 1:
        raise RulesError(f"min_rejected_to_exclude must be at least 1, got {s.min_rejected_to_exclude}")
    if s.min_population < 3:
        raise RulesError(f"min_population must be at least 3, got {s.min_population}")
    if set(s.mad_floor) != set(OUTLIER_FEATURES) | set(EXTRA_FLOORS):
        raise RulesError(f"mad_floor needs exactly the keys {', '.join(OUTLIER_FEATURES + EXTRA_FLOORS)}")
    if any(not isinstance(v, (int, float)) or v <= 0 for v in s.mad_floor.values()):
        raise RulesError("mad_floor values must be positive numbers")
    for label, rule in rules.organs.items():
        if not 0 <= rule.min_components <= rule.max_components or rule.max_components < 1:
            raise RulesError(f"{rules.labels[label]}: need 0 <= min_components <= max_components, max >= 1")
        if rule.min_voxels < 0 or not 0.0 <= rule.min_largest_share <= 1.0:
            raise RulesError(f"{rules.labels[label]}: min_voxels >= 0 and min_largest_share in [0, 1]")
    return rules


def apply_overrides(rules: RuleSet, overrides: dict) -> RuleSet:
    """Rules with ``overrides`` (the parsed file format of the module docstring) applied."""
    if not isinstance(overrides, dict):
        raise RulesError("a rules file must hold a mapping with 'settings', 'default' and/or 'organs'")
    unknown = set(overrides) - {"settings", "default", "organs"}
    if unknown:
        raise RulesError(f"unknown top-level keys in rules: {', '.join(sorted(unknown))}")
    settings = _replace_checked(rules.settings, overrides.get("settings", {}), "settings")
    default_values = overrides.get("default", {})
    organs = {i: _replace_checked(r, default_values, "default") for i, r in rules.organs.items()}
    organ_values = overrides.get("organs", {})
    if not isinstance(organ_values, dict):
        raise RulesError("'organs' must map organ names to rule fields")
    for key, values in organ_values.items():
        label = _organ_id(str(key), rules.labels)
        organs[label] = _replace_checked(organs[label], values, f"organs.{key}")
    return validate_rules(RuleSet(settings, organs, rules.labels))


def read_rules_file(path: str | Path) -> dict:
    """Parse a JSON (or, with PyYAML installed, YAML) rules file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise RulesError(f"rules file {path} not found")
    try:
        text = read_bounded_text(path, "rules file")
    except (OSError, ValueError) as exc:
        raise RulesError(f"{path}: cannot read the rules file ({getattr(exc, 'strerror', None) or exc})") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        if importlib.util.find_spec("yaml") is None:
            raise RulesError(f"{path}: YAML rules need PyYAML (pip install pyyaml), or use JSON")
        import yaml
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RulesError(f"{path}: invalid YAML ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError(f"{path}: invalid JSON ({exc})") from exc


def load_rules(path: str | Path | None = None, labels: dict[int, str] | None = None,
               **settings: float | str | None) -> RuleSet:
    """Default rules for ``labels``, then the file at ``path`` (if any), then non-None ``settings`` (CLI flags)."""
    rules = default_rules(labels)
    if path is not None:
        rules = apply_overrides(rules, read_rules_file(path))
    flags = {k: v for k, v in settings.items() if v is not None}
    return apply_overrides(rules, {"settings": flags}) if flags else validate_rules(rules)
