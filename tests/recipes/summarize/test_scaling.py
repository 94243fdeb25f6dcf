"""Chinchilla calculator: consistent formulas, the fit's optimum, the report's thresholds and wording, the CLI."""

import numpy as np
import pytest

from jaxft.recipes.summarize import scaling
from jaxft.recipes.summarize.cli import main


@pytest.mark.parametrize("compute", [1e15, 3.3e19, 5.76e23])
def test_rule_optimum_spends_the_budget(compute):
    n, d = scaling.rule_optimum(compute)
    assert 6 * n * d == pytest.approx(compute, rel=1e-12)
    assert d == pytest.approx(20 * n, rel=1e-12)


def test_chinchilla_budget_gives_70b_on_1_4t_tokens():
    # Chinchilla itself: 70B parameters on 1.4T tokens, C = 6·N·D = 5.88e23.
    n, d = scaling.rule_optimum(6 * 70e9 * 1.4e12)
    assert n == pytest.approx(70e9, rel=1e-9) and d == pytest.approx(1.4e12, rel=1e-9)


@pytest.mark.parametrize("compute", [1e18, 1e21, 5.76e23])
def test_fit_optimum_minimises_the_loss_along_the_budget(compute):
    fit = scaling.HOFFMANN
    n_opt, d_opt = fit.optimum(compute)
    assert 6 * n_opt * d_opt == pytest.approx(compute, rel=1e-12)
    grid = n_opt * np.logspace(-1, 1, 2001)  # N from N_opt/10 to 10·N_opt, D = C/(6N)
    losses = [fit.loss(n, compute / (6 * n)) for n in grid]
    best = grid[int(np.argmin(losses))]
    assert best == pytest.approx(n_opt, rel=2e-3)
    assert min(losses) >= fit.loss(n_opt, d_opt) - 1e-12


def test_fit_constants_and_loss():
    fit = scaling.HOFFMANN
    assert (fit.E, fit.A, fit.B, fit.alpha, fit.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert fit.loss(1e9, 2e10) == pytest.approx(1.69 + 406.4 / 1e9 ** 0.34 + 410.7 / 2e10 ** 0.28, rel=1e-12)


def test_any_two_give_the_third():
    a = scaling.analyze(params=2e6, tokens=5e7)
    assert a.compute == pytest.approx(6 * 2e6 * 5e7)
    b = scaling.analyze(params=2e6, compute=a.compute)
    c = scaling.analyze(tokens=5e7, compute=a.compute)
    assert b.tokens == pytest.approx(5e7) and c.params == pytest.approx(2e6)
    # efficiencies are reciprocal because 6·N_opt·D_opt = C = 6·N·D
    assert a.model_efficiency * a.token_efficiency == pytest.approx(1.0)
    assert a.model_efficiency == pytest.approx(2e6 / np.sqrt(a.compute / 120))


@pytest.mark.parametrize("kwargs, match", [
    (dict(params=1e6), "two of"),
    (dict(params=1e6, tokens=1e6, compute=6e12), "at most two"),
    (dict(params=-1.0, tokens=1e6), "params must be a positive"),
    (dict(compute=0.0), "compute must be a positive"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scaling.analyze(**kwargs)


def test_recommendations_thresholds_and_wording():
    # N_opt = 1e6 at C = 6·20·1e12; efficiency = N / 1e6
    compute = 120e12
    def recs(params):
        return scaling.analyze(params=params, compute=compute).recommendations()
    assert recs(1e6) == [] and recs(1.19e6) == [] and recs(0.85e6) == []
    assert recs(1.3e6) == ["Consider reducing LoRA rank. Current trainable: 1.3e+06, Optimal: 1.0e+06",
                           "Consider using more training data. Available: 1.5e+07, Optimal: 2.0e+07"]
    assert recs(0.5e6) == ["Consider increasing LoRA rank. Current trainable: 5.0e+05, Optimal: 1.0e+06",
                           "Consider using less training data. Available: 4.0e+07, Optimal: 2.0e+07"]


def test_format_count():
    assert [scaling.format_count(v) for v in (12.0, 1234.0, 8.8e6, 4.94e8, 1.5e9)] == \
        ["12.00", "1.23K", "8.80M", "494.00M", "1.50B"]


def test_cli_report(capsys):
    assert main(["scaling", "--params", "1e6", "--tokens", "2e7", "--total-params", "4.94e8"]) == 0
    out = capsys.readouterr().out
    for line in ["CHINCHILLA SCALING LAWS ANALYSIS (LoRA)", "Trainable LoRA Parameters: 1.00M",
                 "Base Model Size: 494.00M parameters", "Optimal Model Size: 1.00M parameters",
                 "Available Tokens: 20.00M", "Optimal Tokens: 20.00M", "Compute Budget: 120000.00B FLOPs",
                 "Model Efficiency: 1.00x", "Token Efficiency: 1.00x", "✓ Configuration is close to optimal!"]:
        assert line in out.splitlines()
    n, d = scaling.HOFFMANN.optimum(1.2e14)
    assert f"  Compute-Optimal Model Size: {scaling.format_count(n)} parameters" in out
    assert f"  Predicted Loss at the Optimum: {scaling.HOFFMANN.loss(n, d):.3f}" in out
