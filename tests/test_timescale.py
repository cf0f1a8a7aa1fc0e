"""τ_mem(K) and its power-law fit, against tables with a known answer."""

import numpy as np
import pytest

from memgen.metrics.timescale import PowerLaw, fit_power_law, tau_mem, tau_mem_per_K

STEPS = [100, 200, 400, 800, 1600]


def test_tau_mem_is_the_first_step_at_or_past_the_threshold():
    assert tau_mem(STEPS, [0.0, 0.2, 0.5, 0.9, 1.0]) == 400  # 0.5 ≥ 0.5 counts
    assert tau_mem(STEPS, [0.0, 0.2, 0.49, 0.9, 1.0]) == 800
    assert tau_mem(STEPS, [0.0, 0.2, 0.49, 0.9, 1.0], threshold=0.95) == 1600
    assert tau_mem(STEPS, [0.6, 0.2, 0.1, 0.0, 0.0]) == 100  # first, not last crossing
    assert tau_mem(STEPS, [0.0, 0.1, 0.2, 0.3, 0.4]) is None  # never reached
    assert tau_mem(STEPS, [0.0, np.nan, 0.7, 0.9, 1.0]) == 400  # NaN: not measured
    assert isinstance(tau_mem(STEPS, [1.0] * 5), int)
    assert tau_mem_per_K(STEPS, [[0, 0, 0.5, 1, 1], [0, 0, 0, 0, 0.1]]) == [400, None]


@pytest.mark.parametrize("steps, memorized, threshold, match", [
    ([100, 50, 200], [0, 0, 1], 0.5, "ascending"),
    ([100, 100, 200], [0, 0, 1], 0.5, "ascending"),
    ([100, 200], [0, 0, 1], 0.5, "shapes"),
    ([], [], 0.5, "non-empty"),
    ([100, 200], [0, 1.5], 0.5, r"\[0, 1\]"),
    ([100, 200], [0, 1], 0.0, "threshold"),
    ([100, 200], [0, 1], 1.5, "threshold"),
])
def test_tau_mem_bad_input(steps, memorized, threshold, match):
    with pytest.raises(ValueError, match=match):
        tau_mem(steps, memorized, threshold)


def test_exact_power_law_is_recovered_exactly():
    K = np.array([16, 64, 256, 1024, 4096], dtype=float)
    for b, a in [(1.0, 3.0), (0.73, 120.0), (-0.5, 2.0)]:
        fit = fit_power_law(K, a * K**b)
        assert isinstance(fit, PowerLaw) and fit.n_points == 5
        assert abs(fit.exponent - b) < 1e-12
        assert fit.prefactor == pytest.approx(a, rel=1e-10)
        assert fit.stderr < 1e-12 and fit.r2 == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(fit.predict(K), a * K**b, rtol=1e-10)


def test_not_reached_points_are_left_out():
    K = [10, 100, 1000, 10000, 100000]
    fit = fit_power_law(K, [20.0, 200.0, None, 20000.0, np.nan])
    assert fit.n_points == 3 and abs(fit.exponent - 1.0) < 1e-12


def test_noisy_power_law_interval_covers_the_truth():
    # log τ = log 5 + 1 · log K + N(0, 0.3²): the OLS t-interval is exact for this model.
    rng = np.random.default_rng(20250527)
    K = np.geomspace(8, 8192, 8)
    covered, exponents = 0, []
    for _ in range(500):
        tau = 5.0 * K * np.exp(rng.normal(0, 0.3, len(K)))
        fit = fit_power_law(K, tau)
        covered += fit.ci95[0] <= 1.0 <= fit.ci95[1]
        exponents.append(fit.exponent)
        assert fit.ci95[0] < fit.exponent < fit.ci95[1] and 0 < fit.r2 <= 1
    assert covered / 500 >= 0.94
    # The standard error matches the spread of the estimates: σ / sqrt(Σ(log K − mean)²).
    x = np.log(K)
    assert np.std(exponents) == pytest.approx(0.3 / np.sqrt(((x - x.mean()) ** 2).sum()),
                                              rel=0.1)


def test_interval_matches_the_t_quantile():
    from scipy import stats

    K = np.array([1.0, 2.0, 4.0, 8.0])
    tau = np.exp(np.log(K) + np.array([0.1, -0.1, -0.1, 0.1]))
    fit = fit_power_law(K, tau)
    half = (fit.ci95[1] - fit.ci95[0]) / 2
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * fit.stderr)
    assert fit.exponent == pytest.approx(1.0)  # symmetric residuals leave the slope at 1


@pytest.mark.parametrize("K, tau, match", [
    ([10, 100], [1.0, 10.0], "too few"),
    ([10, 100, 1000], [1.0, None, 10.0], "too few"),
    ([10, 10, 10], [1.0, 2.0, 3.0], "one K"),
    ([10, 100, 1000], [1.0, 0.0, 10.0], "positive"),
    ([0, 100, 1000], [1.0, 2.0, 10.0], "positive"),
    ([10, 100, 1000], [1.0, 2.0], "arrays"),
])
def test_fit_bad_input(K, tau, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(K, tau)


def test_phase_map_builds_with_nans():
    from memgen.report.figures import plot_phase_map

    Ks, steps = [1000, 10, 100], [100, 1000, 10000, 100000]
    rng = np.random.default_rng(0)
    fractions = rng.dirichlet(np.ones(3), size=(3, 4))
    fractions[0, 2] = np.nan  # a (K, steps) pair never run
    fig = plot_phase_map(Ks, steps, fractions, tau=[None, 1000, 10000], title="phase")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax not in bars]
    assert len(panels) == 3 and len(bars) == 3
    for ax, name in zip(panels, ("memorized", "spurious", "generalized")):
        assert ax.get_title() == name
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert ax.get_xlabel() == "training steps" and ax.get_ylabel() == "K (training-set size)"
        mesh = ax.collections[0]
        assert mesh.get_clim() == (0, 1)
        assert np.ma.count_masked(mesh.get_array()) == 1
        (overlay,) = ax.lines
        np.testing.assert_array_equal(overlay.get_ydata(), [10, 100, 1000])  # sorted by K
        np.testing.assert_array_equal(overlay.get_xdata(), [1000, 10000, np.nan])
    for bar in bars:
        assert bar.get_ylim() == (0, 1)
    import matplotlib.pyplot as plt

    plt.close(fig)
    with pytest.raises(ValueError, match="shape"):
        plot_phase_map(Ks, steps, fractions[:, :3])
    with pytest.raises(ValueError, match="positive"):
        plot_phase_map(Ks, [0, 1, 2, 3], fractions)
