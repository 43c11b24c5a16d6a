"""ETTA's integration over several adapted states (``--etta_states``) and its settings, on hand-computed cases."""

import re

import numpy as np
import pytest
import torch

from swinbob.infer.etta import EttaConfig, integrate


def _probs_logits(*voxels: tuple[float, float]) -> torch.Tensor:
    """Two-class logits (2, n, 1, 1) whose softmax is exactly the given (background, foreground) pairs."""
    return torch.tensor(voxels, dtype=torch.float64).T.log().reshape(2, len(voxels), 1, 1).float()


def _entropy(*voxels: tuple[float, float]) -> float:
    from scipy.stats import entropy

    return float(np.mean([entropy(v, base=2) for v in voxels]))  # two classes: normalised by log 2


SOURCE = ((0.6, 0.4), (0.4, 0.6))  # one background and one foreground voxel, unsure
STATE_A = ((0.8, 0.2), (0.2, 0.8))  # surer, same foreground
STATE_B = ((0.9, 0.1), (0.1, 0.9))  # surer still
WORSE = ((0.55, 0.45), (0.45, 0.55))  # entropy above the source's
COLLAPSED = ((0.9, 0.1), (0.9, 0.1))  # sure, but the foreground voxel is gone


def test_integration_over_several_states_is_their_inverse_entropy_weighted_mean_with_the_source():
    mixed, info = integrate(_probs_logits(*SOURCE), [_probs_logits(*STATE_A), _probs_logits(*STATE_B)], "softmax", 0.5)
    h = np.array([_entropy(*SOURCE), _entropy(*STATE_A), _entropy(*STATE_B)])
    w = (1 / h) / (1 / h).sum()
    expected = sum(wi * torch.tensor(p, dtype=torch.float64).T.reshape(2, 2, 1, 1)
                   for wi, p in zip(w, (SOURCE, STATE_A, STATE_B)))
    assert torch.allclose(mixed.double(), expected, atol=1e-6)
    assert info["states_kept"] == 2 and info["weight_adapted"] == pytest.approx(w[1] + w[2], rel=1e-5)
    assert info["entropy_states"] == pytest.approx(list(h[1:]), rel=1e-5)
    assert info["entropy_adapted"] == pytest.approx(h[2], rel=1e-5)  # the final state's


def test_integration_keeps_only_the_states_that_pass_and_reports_the_final_state():
    mixed, info = integrate(_probs_logits(*SOURCE), [_probs_logits(*STATE_A), _probs_logits(*WORSE)], "softmax", 0.5)
    h_s, h_a = _entropy(*SOURCE), _entropy(*STATE_A)
    w_a = (1 / h_a) / (1 / h_s + 1 / h_a)
    expected = ((1 - w_a) * torch.tensor(SOURCE) + w_a * torch.tensor(STATE_A)).T.reshape(2, 2, 1, 1)
    assert torch.allclose(mixed, expected, atol=1e-6) and info["states_kept"] == 1
    assert info["entropy_adapted"] == pytest.approx(_entropy(*WORSE), rel=1e-5) and "fallback" not in info
    for states, reason in [((WORSE, COLLAPSED), "foreground collapsed (0.5000 -> 0.0000)"),
                           ((COLLAPSED, WORSE), "entropy did not decrease")]:
        none, info = integrate(_probs_logits(*SOURCE), [_probs_logits(*s) for s in states], "softmax", 0.5)
        assert none is None and info["fallback"] == reason and info["states_kept"] == 0  # the last state's reason
    for single in (_probs_logits(*STATE_A), [_probs_logits(*STATE_A)]):  # one state: no per-state entries
        assert set(integrate(_probs_logits(*SOURCE), single, "softmax", 0.5)[1]) == {
            "entropy_source", "entropy_adapted", "foreground_source", "foreground_adapted", "weight_adapted"}


@pytest.mark.parametrize("states", [(0,), (3,), (1, 1), (2, 0)])
def test_states_must_be_distinct_step_counts_below_steps(states):
    message = rf"ETTA states must be distinct step counts in \[1, steps=3\), got {re.escape(str(states))}$"
    with pytest.raises(ValueError, match=message):
        EttaConfig(steps=3, states=states)


def test_the_lowest_and_highest_states_and_both_optimizers_are_accepted():
    assert EttaConfig(steps=3, states=(1, 2), optimizer="sgd").states == (1, 2)
    assert EttaConfig(steps=2, states=(1,)).optimizer == "adam"
    with pytest.raises(ValueError, match=r"^ETTA optimizer must be one of \['adam', 'sgd'\], got 'rmsprop'$"):
        EttaConfig(optimizer="rmsprop")
