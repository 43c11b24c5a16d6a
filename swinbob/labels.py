"""Label maps of the three benchmarks (facts from the upstream projects).

Kept as plain ``{id: name}`` dictionaries so that they can be written into dataset.json files,
checkpoint configs and reports without conversion.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

IGNORE_LABEL = 255
"""Label value written by SOLF for rejected organs: such voxels give no supervision at all."""

_SIDE_WORDS = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}
_LEFT_WORD = re.compile(r"(^|[_\-. ])left($|[_\-. ])")

_TOTALVIBE_NAMES = (
    "background spleen kidney_right kidney_left gallbladder liver stomach pancreas "
    "adrenal_gland_right adrenal_gland_left lung_upper_lobe_left lung_lower_lobe_left "
    "lung_upper_lobe_right lung_middle_lobe_right lung_lower_lobe_right esophagus trachea "
    "thyroid_gland intestine duodenum unused urinary_bladder prostate sacrum heart aorta "
    "pulmonary_vein brachiocephalic_trunk subclavian_artery_right subclavian_artery_left "
    "common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left "
    "brachiocephalic_vein_right atrial_appendage_left superior_vena_cava inferior_vena_cava "
    "portal_vein_and_splenic_vein iliac_artery_left iliac_artery_right iliac_vena_left "
    "iliac_vena_right humerus_left humerus_right scapula_left scapula_right clavicula_left "
    "clavicula_right femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left "
    "gluteus_maximus_right gluteus_medius_left gluteus_medius_right gluteus_minimus_left "
    "gluteus_minimus_right autochthon_left autochthon_right iliopsoas_left iliopsoas_right sternum "
    "costal_cartilages subcutaneous_fat muscle inner_fat IVD vertebra_body "
    "vertebra_posterior_elements spinal_channel bone_other"
).split()

TOTALVIBE_LABELS: dict[int, str] = dict(enumerate(_TOTALVIBE_NAMES))
"""TotalVibeSegmentator IDs 0..72 (UKBOB). ID 20 is unused but kept so that IDs equal channels."""

_TOTALSEGMENTATOR_HEAD = (
    "background spleen kidney_right kidney_left gallbladder liver stomach pancreas adrenal_gland_right "
    "adrenal_gland_left lung_upper_lobe_left lung_lower_lobe_left lung_upper_lobe_right lung_middle_lobe_right "
    "lung_lower_lobe_right esophagus trachea thyroid_gland small_bowel duodenum colon urinary_bladder prostate "
    "kidney_cyst_left kidney_cyst_right sacrum vertebrae_S1"
).split()
_TOTALSEGMENTATOR_TAIL = (
    "heart aorta pulmonary_vein brachiocephalic_trunk subclavian_artery_right subclavian_artery_left "
    "common_carotid_artery_right common_carotid_artery_left brachiocephalic_vein_left brachiocephalic_vein_right "
    "atrial_appendage_left superior_vena_cava inferior_vena_cava portal_vein_and_splenic_vein iliac_artery_left "
    "iliac_artery_right iliac_vena_left iliac_vena_right humerus_left humerus_right scapula_left scapula_right "
    "clavicula_left clavicula_right femur_left femur_right hip_left hip_right spinal_cord gluteus_maximus_left "
    "gluteus_maximus_right gluteus_medius_left gluteus_medius_right gluteus_minimus_left gluteus_minimus_right "
    "autochthon_left autochthon_right iliopsoas_left iliopsoas_right brain skull"
).split()
_TOTALSEGMENTATOR_NAMES = (
    _TOTALSEGMENTATOR_HEAD
    + [f"vertebrae_L{i}" for i in range(5, 0, -1)]
    + [f"vertebrae_T{i}" for i in range(12, 0, -1)]
    + [f"vertebrae_C{i}" for i in range(7, 0, -1)]
    + _TOTALSEGMENTATOR_TAIL
    + [f"rib_{side}_{i}" for side in ("left", "right") for i in range(1, 13)]
    + ["sternum", "costal_cartilages"]
)

TOTALSEGMENTATOR_LABELS: dict[int, str] = dict(enumerate(_TOTALSEGMENTATOR_NAMES))
"""TotalSegmentator v2 ``total`` task (CT), IDs 0..117. Written from our knowledge of
TotalSegmentator's class map, then checked name by name against ``class_map["total"]`` in
``totalsegmentator/map_to_binary.py`` (wasserth/TotalSegmentator, commit 0275d30); other versions
may differ: pass that version's ``dataset.json`` to SOLF with ``--labels`` if in doubt."""

BTCV_LABELS: dict[int, str] = dict(
    enumerate(
        (
            "background spleen right_kidney left_kidney gallbladder esophagus liver stomach aorta "
            "inferior_vena_cava portal_and_splenic_veins pancreas right_adrenal_gland "
            "left_adrenal_gland"
        ).split()
    )
)

BRATS_LABELS_2023: dict[int, str] = {0: "background", 1: "NCR", 2: "SNFH", 3: "ET"}
BRATS_LABELS_2021: dict[int, str] = {0: "background", 1: "NCR", 2: "SNFH", 4: "ET"}


def brats_regions(et_label: int = 3) -> dict[str, tuple[int, ...]]:
    """TC/WT/ET regions as sets of raw BraTS labels; ``et_label`` is 3 (2023) or 4 (2021)."""
    if et_label not in (3, 4):
        raise ValueError(f"BraTS enhancing-tumour label must be 3 (BraTS 2023) or 4 (BraTS 2021), got {et_label}")
    return {"TC": (1, et_label), "WT": (1, 2, et_label), "ET": (et_label,)}


def ids_by_name(label_map: dict[int, str]) -> dict[str, int]:
    """Inverse of a label map, for readable rules and tests (``ids_by_name(m)["liver"]``)."""
    return {name: label for label, name in label_map.items()}


def mirror_name(name: str) -> str | None:
    """The name of the other side (``kidney_left`` -> ``kidney_right``, ``left_lung`` ->
    ``right_lung``, ``rib_left_3`` -> ``rib_right_3``), or None if no word says left or right.

    Words are separated by ``_``, ``-``, ``.`` or spaces, so ``cleft`` or ``brightness`` never count.
    """
    parts = re.split(r"([_\-. ]+)", name)
    sides = [i for i, part in enumerate(parts) if part in _SIDE_WORDS]
    if len(sides) != 1:
        return None
    parts[sides[0]] = _SIDE_WORDS[parts[sides[0]]]
    return "".join(parts)


def side_pairs(labels: Mapping[int, str]) -> list[tuple[int, int]]:
    """(left ID, right ID) of every pair of labels whose names differ only by left/right, by
    increasing left ID. Names are compared without regard to case (``Kidney_Left`` pairs with
    ``kidney_right``); a name whose lower-case form occurs twice pairs with nothing, and a side
    without its partner (``atrial_appendage_left``) stays unpaired."""
    by_name: dict[str, int] = {}
    clashes: set[str] = set()
    for label, name in labels.items():
        key = name.lower()
        if key in by_name:
            clashes.add(key)
        by_name[key] = label
    pairs = []
    for key, label in sorted(by_name.items(), key=lambda item: item[1]):
        partner = mirror_name(key)
        if partner in by_name and _LEFT_WORD.search(key) and not {key, partner} & clashes:
            pairs.append((label, by_name[partner]))
    return pairs


def mirror_permutation(labels: Mapping[int, str]) -> tuple[int, ...] | None:
    """What each label value 0..max (a softmax channel) becomes in a mirror image:
    its partner for the labels of :func:`side_pairs`, itself otherwise; None when there is no pair.

    Used wherever an image is mirrored (training augmentation, flip TTA): a mirror image of a body,
    along any axis, is a body whose left and right are exchanged, so the names of left/right
    structures change with it; two mirrors cancel, as does a rotation, which keeps every name.
    """
    pairs = side_pairs(labels)
    if not pairs:
        return None
    permutation = list(range(max(labels) + 1))
    for left, right in pairs:
        permutation[left], permutation[right] = right, left
    return tuple(permutation)


def describe_side_pairs(labels: Mapping[int, str]) -> str:
    """The pairs of :func:`side_pairs` by name for logs (``kidney_left/kidney_right, ...``; ``none``)."""
    return ", ".join(f"{labels[left]}/{labels[right]}" for left, right in side_pairs(labels)) or "none"
