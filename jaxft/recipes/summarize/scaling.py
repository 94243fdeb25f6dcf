"""Chinchilla compute arithmetic (Hoffmann et al., 2022) for sizing a fine-tuning run.

Two estimates of the compute-optimal model size N and token count D for a budget C = 6·N·D FLOPs:

* the 20-tokens-per-parameter rule: D = 20·N, so C = 6·N·20·N and N_opt = sqrt(C / 120),
  D_opt = 20·N_opt (these satisfy 6·N_opt·D_opt = C exactly);
* the paper's parametric fit (approach 3), L(N, D) = E + A/N^alpha + B/D^beta, minimised
  along C = 6·N·D: N_opt = G·(C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta))/G with
  G = (alpha·A / (beta·B))^(1/(alpha+beta)).

The two disagree by about 2x in N at the Chinchilla budget (5.76e23 FLOPs: the rule gives 69.3B
parameters on 1.39T tokens, near the 67B on 1.5T of the paper's Table 3; the fit gives 32.2B on
2.98T). The fit's optimum grows as C^0.45, not C^0.5, and is sensitive to its constants, which are
published rounded (alpha 0.34, beta 0.28, A and B to one decimal): with them the optimum sits at ~93
tokens per parameter at that budget instead of ~20. The report prints the ratio of the two.

The report keeps the layout and thresholds of the reference project's analysis; N is the number of
*trainable* parameters (the LoRA adapters, or every weight of a full fine-tune), with the full model
size printed for reference. For fine-tuning these laws (fitted on pre-training runs) are a rough guide,
not a prediction; the fit's loss is on the paper's pre-training text, not this run's data.
"""

from __future__ import annotations

import dataclasses
import math

TOKENS_PER_PARAM = 20.0
FLOPS_PER_PARAM_TOKEN = 6.0


@dataclasses.dataclass(frozen=True)
class ParametricFit:
    """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al., approach 3)."""

    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def optimum(self, compute: float) -> tuple[float, float]:
        """(N, D) minimising ``loss`` subject to 6·N·D = compute."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        budget = compute / FLOPS_PER_PARAM_TOKEN
        params = g * budget ** (self.beta / (self.alpha + self.beta))
        return params, budget / params


HOFFMANN = ParametricFit()


def training_compute(params: float, tokens: float) -> float:
    """C = 6·N·D FLOPs (forward and backward over D tokens through N parameters)."""
    return FLOPS_PER_PARAM_TOKEN * params * tokens


def rule_optimum(compute: float) -> tuple[float, float]:
    """(N_opt, D_opt) of the 20-tokens-per-parameter rule for ``compute`` FLOPs."""
    params = math.sqrt(compute / (FLOPS_PER_PARAM_TOKEN * TOKENS_PER_PARAM))
    return params, TOKENS_PER_PARAM * params


@dataclasses.dataclass(frozen=True)
class ScalingAnalysis:
    compute: float
    optimal_params: float
    optimal_tokens: float
    fit_params: float
    fit_tokens: float
    fit_loss: float
    params: float | None = None  # the run's trainable parameters (None: budget only)
    tokens: float | None = None
    total_params: float | None = None
    current_loss: float | None = None
    lora: bool = True  # False: a full fine-tune (the words for what N counts and what to change)

    @property
    def model_efficiency(self) -> float | None:
        return None if self.params is None else self.params / self.optimal_params

    @property
    def token_efficiency(self) -> float | None:
        return None if self.tokens is None else self.tokens / self.optimal_tokens

    def recommendations(self) -> list[str]:
        out = []
        if self.params is not None:
            current, optimal = f"{self.params:.1e}", f"{self.optimal_params:.1e}"
            smaller, larger = ("reducing LoRA rank", "increasing LoRA rank") if self.lora else \
                ("a smaller model", "a larger model")
            if self.model_efficiency > 1.2:
                out.append(f"Consider {smaller}. Current trainable: {current}, Optimal: {optimal}")
            elif self.model_efficiency < 0.8:
                out.append(f"Consider {larger}. Current trainable: {current}, Optimal: {optimal}")
        if self.tokens is not None:
            current, optimal = f"{self.tokens:.1e}", f"{self.optimal_tokens:.1e}"
            if self.token_efficiency < 0.8:
                out.append(f"Consider using more training data. Available: {current}, Optimal: {optimal}")
            elif self.token_efficiency > 1.2:
                out.append(f"Consider using less training data. Available: {current}, Optimal: {optimal}")
        return out


def analyze(params: float | None = None, tokens: float | None = None, compute: float | None = None,
            total_params: float | None = None, fit: ParametricFit = HOFFMANN, lora: bool = True) -> ScalingAnalysis:
    """The analysis from any two of (params, tokens, compute), or from ``compute`` alone.

    The missing one follows from C = 6·N·D. Values must be positive; all three at once are refused
    (they would have to agree exactly).
    """
    given = {"params": params, "tokens": tokens, "compute": compute, "total params": total_params}
    for name, value in given.items():
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, got {value}")
    if params is not None and tokens is not None and compute is not None:
        raise ValueError("give at most two of params, tokens and compute (the third is 6·N·D)")
    if compute is None:
        if params is None or tokens is None:
            raise ValueError("give two of params, tokens and compute, or compute alone")
        compute = training_compute(params, tokens)
    elif params is not None:
        tokens = compute / (FLOPS_PER_PARAM_TOKEN * params)
    elif tokens is not None:
        params = compute / (FLOPS_PER_PARAM_TOKEN * tokens)
    n_opt, d_opt = rule_optimum(compute)
    n_fit, d_fit = fit.optimum(compute)
    return ScalingAnalysis(
        compute=compute, optimal_params=n_opt, optimal_tokens=d_opt, fit_params=n_fit, fit_tokens=d_fit,
        fit_loss=fit.loss(n_fit, d_fit), params=params, tokens=tokens, total_params=total_params,
        current_loss=None if params is None else fit.loss(params, tokens), lora=lora)


def engineering(value: float) -> str:
    """``36.43e15``: three significant-ish digits and an exponent that is a multiple of 3."""
    if value == 0 or 1e-3 <= abs(value) < 1e3:
        return f"{value:.2f}"
    exponent = 3 * math.floor(math.log10(abs(value)) / 3)
    mantissa = value / 10 ** exponent
    if abs(mantissa) >= 999.995:  # rounding would print 1000.00e3
        mantissa, exponent = mantissa / 1000, exponent + 3
    return f"{mantissa:.2f}e{exponent}"


def format_count(value: float) -> str:
    """1.23T / 1.23B / 4.56M / 7.89K / 12.00, as the reference prints counts; engineering notation
    from 1e15 on, where no suffix reads well."""
    if value >= 1e15:
        return engineering(value)
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.2f}"


def report(analysis: ScalingAnalysis, fit: ParametricFit = HOFFMANN) -> str:
    """The printed block: the reference's lines, then the parametric fit's optimum."""
    a, rule = analysis, "=" * 60
    lines = ["", rule, f"CHINCHILLA SCALING LAWS ANALYSIS ({'LoRA' if a.lora else 'full fine-tuning'})", rule]
    if a.params is not None:
        lines.append(f"Trainable {'LoRA ' if a.lora else ''}Parameters: {format_count(a.params)}")
    if a.total_params is not None:
        lines.append(f"Base Model Size: {format_count(a.total_params)} parameters")
    lines.append(f"Optimal Model Size: {format_count(a.optimal_params)} parameters")
    if a.tokens is not None:
        lines.append(f"Available Tokens: {format_count(a.tokens)}")
    lines.append(f"Optimal Tokens: {format_count(a.optimal_tokens)}")
    lines.append(f"Compute Budget: {engineering(a.compute)} FLOPs")
    if a.params is not None:
        lines.append(f"Model Efficiency: {a.model_efficiency:.2f}x")
        lines.append(f"Token Efficiency: {a.token_efficiency:.2f}x")
    lines += ["", f"Parametric fit L(N, D) = {fit.E} + {fit.A}/N^{fit.alpha} + {fit.B}/D^{fit.beta}:",
              f"  Compute-Optimal Model Size: {format_count(a.fit_params)} parameters",
              f"  Compute-Optimal Tokens: {format_count(a.fit_tokens)}",
              f"  Predicted Loss at the Optimum: {a.fit_loss:.3f}"]
    if a.current_loss is not None:
        lines.append(f"  Predicted Loss at the Current Size: {a.current_loss:.3f} (pre-training text, not this data)")
    lines.append(f"  The 20-tokens rule's N is {a.optimal_params / a.fit_params:.2f}x the fit's: the fit "
                 f"(its published constants, rounded) puts the optimum at {a.fit_tokens / a.fit_params:.0f} tokens "
                 "per parameter")
    recommendations = a.recommendations()
    if recommendations:
        lines += ["", "RECOMMENDATIONS:"] + [f"{i}. {text}" for i, text in enumerate(recommendations, 1)]
    elif a.params is not None:
        lines += ["", "✓ Configuration is close to optimal!"]
    lines.append(rule)
    return "\n".join(lines)
