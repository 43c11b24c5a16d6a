"""Each scanner-like shift has the magnitude its docstring promises, checked on images whose answer
is known by hand (a ramp, an impulse, a constant) or by the noise's distribution (Rayleigh, Rice).

The held-out shifts are what the robustness figures are reported on, so a wrong magnitude would
silently change every number in the shift benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from swinbob.data.shifts import apply_shift, smooth_field

SEEDS = range(24)


def _ramp() -> np.ndarray:
    """Values -2, -1.5, ..., 29.5 (one negative, one zero), max 29.5, in a 4 x 4 x 4 volume."""
    return (np.arange(64, dtype=np.float32) / 2 - 2).reshape(4, 4, 4)


@pytest.mark.parametrize("severity", [1, 3])
def test_gamma_raises_to_one_plus_three_tenths_severity_or_its_inverse_relative_to_the_maximum(severity):
    image, top = _ramp(), 29.5
    g = 1.0 + 0.3 * severity  # 1.3 or 1.9
    candidates = [top * (np.clip(image, 0, None) / top) ** p for p in (g, 1 / g)]
    chosen = []
    for seed in SEEDS:
        out = apply_shift(image, "gamma", severity, seed)
        matches = [np.allclose(out, c, rtol=1e-5, atol=1e-5) for c in candidates]
        assert sum(matches) == 1, seed
        chosen.append(matches.index(True))
    assert 4 <= sum(chosen) <= len(SEEDS) - 4  # both directions, about equally often
    assert apply_shift(image, "gamma", severity, 0)[0, 0, 0] == 0.0  # negative values clip to 0


def test_global_scaling_multiplies_by_one_plus_severity_or_divides_by_it():
    image = _ramp()
    factors = []
    for seed in SEEDS:
        out = apply_shift(image, "global_scaling", 2, seed)
        factor = float(out[0, 0, 2] / image[0, 0, 2])  # 1 x 1 x 2 -> value -1
        assert factor == pytest.approx(3.0) or factor == pytest.approx(1 / 3)
        np.testing.assert_allclose(out, image * factor, rtol=1e-6)
        factors.append(factor > 1)
    assert 4 <= sum(factors) <= len(SEEDS) - 4


def test_rician_noise_is_the_magnitude_of_complex_noise_of_four_hundredths_severity_of_p99():
    # a zero image: p99 is 0, so the scale is 1; |n1 + i n2| is Rayleigh: mean sigma sqrt(pi/2), std sigma sqrt(2 - pi/2)
    zeros = np.zeros((64, 64, 48), np.float32)
    out = apply_shift(zeros, "rician_noise", 2, seed=1)
    sigma = 0.08
    assert out.min() >= 0 and out.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)
    assert out.std() == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=0.01)
    # a bright constant A = 50 (p99 = 50, sigma = 0.04 x 3 x 50 = 6): Rice, E[x^2] = A^2 + 2 sigma^2
    bright = np.full((64, 64, 48), 50.0, np.float32)
    out = apply_shift(bright, "rician_noise", 3, seed=2).astype(np.float64)
    assert np.mean(out**2) == pytest.approx(50**2 + 2 * 6.0**2, rel=0.005)
    assert out.std() == pytest.approx(6.0, rel=0.02)


def test_gaussian_noise_has_four_hundredths_severity_of_p99_as_std_and_keeps_the_mean():
    image = np.full((64, 64, 48), 20.0, np.float32)
    image.flat[::500] = 1000.0  # 0.2 % bright outliers: the 99th percentile stays 20, the maximum is 1000
    out = apply_shift(image, "gaussian_noise", 3, seed=4).astype(np.float64)[image == 20.0]
    assert out.mean() == pytest.approx(20.0, abs=0.03) and out.std() == pytest.approx(0.04 * 3 * 20.0, rel=0.01)
    assert (out < 20.0).any()  # noise of both signs, background included


@pytest.mark.parametrize("severity", [2, 3])  # sigma 1 and 1.5 voxels: a sampled kernel keeps its variance
def test_blur_spreads_an_impulse_into_a_gaussian_of_half_severity_voxels(severity):
    impulse = np.zeros((25, 25, 25), np.float32)
    impulse[12, 12, 12] = 1.0
    out = apply_shift(impulse, "blur", severity, seed=0).astype(np.float64)
    offsets = np.arange(25) - 12
    profile = out.sum(axis=(1, 2))
    assert out.sum() == pytest.approx(1.0, abs=1e-6)
    assert float((profile * offsets**2).sum()) == pytest.approx((0.5 * severity) ** 2, rel=0.02)


@pytest.mark.parametrize("severity", [1, 3])
def test_bias_field_multiplies_by_exp_of_a_fifth_severity_times_a_unit_smooth_field(severity):
    image = np.full((20, 16, 12), 10.0, np.float32)
    out = apply_shift(image, "bias_field", severity, seed=5).astype(np.float64)
    field = np.log(out / 10.0) / (0.2 * severity)
    assert np.abs(field).max() == pytest.approx(1.0, abs=1e-4)  # scaled to reach exactly +-1
    assert field.max() > 0 > field.min()  # darker and brighter regions
    assert np.abs(np.diff(field, axis=0)).max() < 0.5  # smooth: no jump between neighbours


def test_smooth_field_is_a_cubic_upsampling_of_uniform_control_values_scaled_to_unit_peak():
    field = smooth_field((17, 9, 12), np.random.default_rng(3))
    assert field.shape == (17, 9, 12) and field.dtype == np.float32
    assert np.abs(field).max() == pytest.approx(1.0)
    coarse = np.random.default_rng(3).uniform(-1.0, 1.0, size=(4, 4, 4))
    by_hand = ndimage.zoom(coarse, (17 / 4, 9 / 4, 12 / 4), order=3, mode="nearest")[:17, :9, :12]
    np.testing.assert_allclose(field, by_hand / np.abs(by_hand).max(), atol=1e-6)
    assert np.corrcoef(field.ravel(), by_hand.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("severity, slab", [(1, 2), (2, 3), (3, 4)])
def test_thick_slices_of_a_constant_stay_constant_and_each_slab_is_severity_plus_one_thick(severity, slab):
    image = np.full((3, 2, 24), 7.0, np.float32)
    assert np.allclose(apply_shift(image, "thick_slices", severity, 0), 7.0)
    impulse = np.zeros((1, 1, 24), np.float32)
    impulse[0, 0, 12] = 1.0
    out = apply_shift(impulse, "thick_slices", severity, 0)[0, 0]
    assert out.sum() == pytest.approx(1.0, abs=1e-5)  # mass kept: one slab's share, spread linearly
    assert np.count_nonzero(out > 1e-6) == 2 * slab - 1  # hat of half-width one slab


def test_thick_slices_by_hand_at_the_volume_end_where_slabs_run_out():
    ramp = np.tile(np.arange(8, dtype=np.float32), (3, 2, 1))  # 0..7 along the last axis, 3 x 2 in plane
    out = apply_shift(ramp, "thick_slices", 2, seed=0)
    assert out.shape == ramp.shape
    # 3-voxel slabs (edge voxel repeated) at slices 0, 3, 6: 1/3, 3, 6; linear between; beyond the last, the last
    np.testing.assert_allclose(out[2, 1], [1 / 3, 11 / 9, 19 / 9, 3, 4, 5, 6, 6], rtol=1e-6)
    out = apply_shift(ramp, "thick_slices", 3, seed=0)
    # 4-voxel slabs (slices i-2..i+1, edge repeated) at 0 and 4: (0+0+0+1)/4, (2+3+4+5)/4
    np.testing.assert_allclose(out[0, 0], [0.25, 1.0625, 1.875, 2.6875, 3.5, 3.5, 3.5, 3.5], rtol=1e-6)


@pytest.mark.parametrize("shape, control", [((30,), 4), ((10, 10, 10), 2)])
def test_smooth_field_peaks_at_one_also_when_the_spline_stays_below_the_control_values(shape, control):
    for seed in range(4):  # here the cubic spline peaks below 1 before scaling (0.34 .. 0.99)
        field = smooth_field(shape, np.random.default_rng(seed), control)
        assert np.abs(field).max() == pytest.approx(1.0, abs=1e-6)


def test_shift_input_is_read_as_float_and_a_wrong_name_lists_the_choices():
    ramp = np.tile(np.arange(9), (2, 2, 1))  # integers 0..8
    # 2-voxel slabs (edge repeated) at slices 0, 2, .., 8: 0, 1.5, 3.5, 5.5, 7.5; linear between (no integer rounding)
    np.testing.assert_allclose(apply_shift(ramp, "thick_slices", 1, 0)[1, 0],
                               [0, 0.75, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5], rtol=1e-6)
    with pytest.raises(ValueError, match="choose one of bias_field, gaussian_noise, blur, gamma"):
        apply_shift(ramp, "motion", 1, 0)
