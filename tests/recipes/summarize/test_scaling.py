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


# Hoffmann et al. (2022), Table 3: compute-optimal parameters, FLOPs and tokens (approach 1).
PAPER_TABLE = [(400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9),
               (67e9, 5.76e23, 1.5e12), (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12),
               (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12), (10e12, 1.30e28, 216.2e12)]


@pytest.mark.parametrize("params, compute, tokens", PAPER_TABLE)
def test_rule_optimum_reproduces_the_papers_table(params, compute, tokens):
    n, d = scaling.rule_optimum(compute)
    assert n == pytest.approx(params, rel=0.05) and d == pytest.approx(tokens, rel=0.08)


def test_rule_and_fit_disagree_at_the_chinchilla_budget_and_the_report_says_so():
    a = scaling.analyze(compute=5.76e23)
    assert (a.optimal_params, a.optimal_tokens) == (pytest.approx(69.28e9, rel=1e-3), pytest.approx(1.386e12, rel=1e-3))
    assert (a.fit_params, a.fit_tokens) == (pytest.approx(32.19e9, rel=1e-3), pytest.approx(2.982e12, rel=1e-3))
    assert ("  The 20-tokens rule's N is 2.15x the fit's: the fit (its published constants, rounded) puts the "
            "optimum at 93 tokens per parameter") in scaling.report(a).splitlines()


def test_full_fine_tuning_is_worded_for_what_was_trained():
    lora = scaling.report(scaling.analyze(params=4e5, tokens=1.5e7, lora=True))
    full = scaling.report(scaling.analyze(params=4e5, tokens=1.5e7, lora=False))
    assert "Trainable LoRA Parameters: 400.00K" in lora and "increasing LoRA rank" in lora
    assert "CHINCHILLA SCALING LAWS ANALYSIS (full fine-tuning)" in full.splitlines()
    assert "Trainable Parameters: 400.00K" in full.splitlines() and "LoRA" not in full
    assert "1. Consider a larger model. Current trainable: 4.0e+05, Optimal: 5.5e+05" in full.splitlines()


def test_engineering_notation():
    assert [scaling.engineering(v) for v in (3.6432e16, 5.76e23, 1.2e14, 999.999e3, 12.0, 0.0)] == \
        ["36.43e15", "576.00e21", "120.00e12", "1.00e6", "12.00", "0.00"]
    assert "Compute Budget: 36.43e15 FLOPs" in scaling.report(scaling.analyze(compute=3.6432e16)).splitlines()


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
    assert [scaling.format_count(v) for v in (12.0, 1234.0, 8.8e6, 4.94e8, 1.5e9, 1.39e12, 2.3e16)] == \
        ["12.00", "1.23K", "8.80M", "494.00M", "1.50B", "1.39T", "23.00e15"]


def test_cli_report(capsys):
    assert main(["scaling", "--params", "1e6", "--tokens", "2e7", "--total-params", "4.94e8"]) == 0
    out = capsys.readouterr().out
    for line in ["CHINCHILLA SCALING LAWS ANALYSIS (LoRA)", "Trainable LoRA Parameters: 1.00M",
                 "Base Model Size: 494.00M parameters", "Optimal Model Size: 1.00M parameters",
                 "Available Tokens: 20.00M", "Optimal Tokens: 20.00M", "Compute Budget: 120.00e12 FLOPs",
                 "Model Efficiency: 1.00x", "Token Efficiency: 1.00x", "✓ Configuration is close to optimal!"]:
        assert line in out.splitlines()
    n, d = scaling.HOFFMANN.optimum(1.2e14)
    assert f"  Compute-Optimal Model Size: {scaling.format_count(n)} parameters" in out
    assert f"  Predicted Loss at the Optimum: {scaling.HOFFMANN.loss(n, d):.3f}" in out
