"""Left/right label pairs under mirroring: the pairs found from label names (``swinbob.labels``)."""

from swinbob.data.mni_cohort import STRUCTURE_LABELS
from swinbob.labels import TOTALVIBE_LABELS, describe_side_pairs, ids_by_name, mirror_permutation, side_pairs
from swinbob.tasks import get_task

TV = ids_by_name(TOTALVIBE_LABELS)


# ----------------------------------------------------------------------------------------------
# Pairs from names
# ----------------------------------------------------------------------------------------------

def test_ukbob_pairs_swap_each_side_and_keep_unpaired_sides_and_midline_organs():
    permutation = mirror_permutation(TOTALVIBE_LABELS)
    assert len(permutation) == 73 and sorted(permutation) == list(range(73))
    assert all(permutation[permutation[i]] == i for i in range(73))  # an involution: mirroring twice is nothing
    swapped = {TOTALVIBE_LABELS[i] for i in range(73) if permutation[i] != i}
    assert len(swapped) == 2 * 19 and len(side_pairs(TOTALVIBE_LABELS)) == 19
    for name in ("kidney", "adrenal_gland", "lung_upper_lobe", "iliac_vena", "autochthon", "iliopsoas"):
        left, right = TV[f"{name}_left"], TV[f"{name}_right"]
        assert permutation[left] == right and permutation[right] == left
    for name in ("background", "liver", "spleen", "atrial_appendage_left", "lung_middle_lobe_right", "unused"):
        assert permutation[TV[name]] == TV[name]
    assert describe_side_pairs(TOTALVIBE_LABELS).startswith("kidney_left/kidney_right, adrenal_gland_left/")


def test_pairs_accept_left_x_forms_any_case_and_leave_a_lone_side_alone():
    labels = {0: "background", 1: "left_lung", 2: "Right_Lung", 3: "atrial_appendage_left", 4: "liver",
              5: "cleft_right", 6: "Left-Hippocampus", 7: "Right-Hippocampus"}
    assert mirror_permutation(labels) == (0, 2, 1, 3, 4, 5, 7, 6)
    assert mirror_permutation({0: "background", 1: "atrial_appendage_left", 2: "liver"}) is None
    assert describe_side_pairs({0: "background", 1: "liver"}) == "none"
    # two names that differ only by case: which one is the partner is unknown, so neither pairs
    assert mirror_permutation({0: "background", 1: "kidney_left", 2: "Kidney_Left", 3: "kidney_right"}) is None


def test_task_mirror_channels_come_from_the_label_names_of_softmax_tasks_only():
    btcv = get_task("btcv").mirror_channels
    assert btcv == (0, 1, 3, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 12)  # right/left kidney, right/left adrenal gland
    assert get_task("ukbob").mirror_channels == mirror_permutation(TOTALVIBE_LABELS)
    assert get_task("brats").mirror_channels is None
    assert mirror_permutation(STRUCTURE_LABELS) == (0, 2, 1, 4, 3)
