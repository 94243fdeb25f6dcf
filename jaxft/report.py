"""Run reports: plots of a run's metric log and a ``report.md`` next to them.

A run's workdir holds ``metrics.jsonl`` (one JSON object per logged row: ``{"step", "split":
"train" | "eval", <metrics>}`` and ``{"step", "split": "samples", "name", "text"}``),
``config.json`` (the resolved config) and ``summary.json`` (``best_step``, ``exported_step``,
``export_dir``, ``preset``, ``config_file``, ...). ``write_report(workdir)`` turns them into
``<workdir>/report/``: ``train_loss.png``, ``learning_rate.png``, ``eval.png``,
``tokens_per_s.png`` and ``report.md`` (config changes from the preset, best and exported
steps, the plots, the eval table and the samples logged at each eval).

    python -m jaxft.report runs/a                 # rebuild runs/a/report/
    python -m jaxft.report runs/a runs/b runs/c   # overlay three runs, written to runs/a/report/
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from jaxft.errors import cli_boundary, one_line
from jaxft.files import read_json

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
REPORT_DIR = "report"
_NOT_METRICS = {"step", "split", "name", "text"}


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message names the file."""


@dataclasses.dataclass
class RunLog:
    workdir: Path
    label: str
    train: list[dict[str, Any]]  # one row per logged step, ascending
    eval: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    config: dict[str, Any] | None
    summary: dict[str, Any] | None


def _rows(file: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{file}:{number}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or "split" not in row:
            raise ReportError(f"{file}:{number}: a row needs an integer 'step' and a 'split'")
        rows.append(row)
    return rows


def _last_per_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A resumed run logs again the steps between its last checkpoint and the preemption:
    the later row (the run that continued) wins."""
    by_step = {}
    for row in rows:
        by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def read_run(workdir: str | Path) -> RunLog:
    workdir = Path(workdir)
    metrics_file = workdir / METRICS_FILE
    if not metrics_file.is_file():
        raise ReportError(f"{metrics_file}: not found; is {workdir} a jaxft run directory?")
    rows = _rows(metrics_file)
    config = read_json(workdir / CONFIG_FILE, error=ReportError) if (workdir / CONFIG_FILE).is_file() else None
    summary = read_json(workdir / SUMMARY_FILE, error=ReportError) if (workdir / SUMMARY_FILE).is_file() else None
    samples: dict[tuple[int, str], dict] = {}
    for row in rows:
        if row["split"] == "samples":
            samples[(row["step"], str(row.get("name", "")))] = row
    return RunLog(workdir=workdir, label=workdir.resolve().name,
                  train=_last_per_step([r for r in rows if r["split"] == "train"]),
                  eval=_last_per_step([r for r in rows if r["split"] == "eval"]),
                  samples=[samples[k] for k in sorted(samples)], config=config, summary=summary)


def _unique_labels(runs: list[RunLog]) -> None:
    """Runs named alike (runs/a/x, runs/b/x) are labelled with their parent directory too."""
    names = [r.label for r in runs]
    for run in runs:
        if names.count(run.label) > 1:
            run.label = f"{run.workdir.resolve().parent.name}/{run.label}"


# -- config diff ---------------------------------------------------------------------------

def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _as_json(tree: Any) -> Any:
    return json.loads(json.dumps(tree, default=str))  # tuples -> lists, like config.json


def _resolve_config_file(path: str, workdir: Path) -> Path | None:
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    # relative to where the run started: usually the checkout (also tried) or the run's parent directories
    for base in (Path.cwd(), workdir, *workdir.resolve().parents, Path(__file__).resolve().parents[1]):
        if (base / candidate).is_file():
            return base / candidate
    return None


def preset_config(run: RunLog) -> tuple[dict[str, Any] | None, str]:
    """The run's preset as a plain dict (from the config file and preset named in
    summary.json or config.json), and a description of where it came from (or why not)."""
    recorded = {**(run.config or {}), **(run.summary or {})}
    file, preset = recorded.get("config_file"), recorded.get("preset")
    if not file:
        return None, f"no config_file recorded in {run.workdir / SUMMARY_FILE}"
    source = f"{file}:{preset}" if preset else str(file)
    path = _resolve_config_file(str(file), run.workdir)
    if path is None:
        return None, f"{file}: not found"
    try:
        spec = importlib.util.spec_from_file_location("jaxft_report_preset", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(preset) if preset else module.get_config()
    except Exception as e:  # the user's config file: report its own message, keep the rest of the report
        return None, f"{source}: {type(e).__name__}: {e}"
    to_dict = getattr(config, "to_dict", None)
    return _as_json(to_dict() if to_dict else dict(config)), source


def config_diff(preset: dict[str, Any], resolved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, preset value, run value) for each dotted key that differs; a missing side is
    ``"(absent)"``."""
    a, b = _flatten(_as_json(preset)), _flatten(_as_json(resolved))
    absent = "(absent)"
    return [(k, a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b))
            if a.get(k, absent) != b.get(k, absent)]


# -- plots ---------------------------------------------------------------------------------

def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], float(r[key])) for r in rows if _numeric(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _metric_keys(rows: list[dict], include=lambda key: True) -> list[str]:
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key not in _NOT_METRICS and _numeric(value) and include(key):
                keys[key] = None
    return list(keys)


def _is_lr(key: str) -> bool:
    return key == "lr" or key.startswith("lr/")


def _plot(file: Path, panels: list[tuple[str, list[tuple[str, list[int], list[float]]]]]) -> bool:
    """One PNG with a panel per (title, lines); False (nothing written) when no line has data."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    panels = [(title, [line for line in lines if line[1]]) for title, lines in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5 * cols, 3.4 * rows), layout="constrained")
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for label, steps, values in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    fig.savefig(file, dpi=100)
    return True


def _plots(runs: list[RunLog], out: Path) -> dict[str, str]:
    """Writes the PNGs that have data; returns {file name: title}."""
    overlay = len(runs) > 1

    def lines(rows_of, key, label=None):
        return [(label or (run.label if overlay else key), *_series(rows_of(run), key)) for run in runs]

    written = {}
    train, evals = (lambda r: r.train), (lambda r: r.eval)
    if _plot(out / "train_loss.png", [("train loss", lines(train, "loss"))]):
        written["train_loss.png"] = "train loss"
    lr_keys = list(dict.fromkeys(k for run in runs for k in _metric_keys(run.train, _is_lr)))
    lr_keys = [k for k in lr_keys if k != "lr"] or lr_keys  # per-group rates when logged, else the one rate
    if overlay:  # a panel per group, a line per run
        lr_panels = [(k, [(run.label, *_series(run.train, k)) for run in runs]) for k in lr_keys]
    else:
        lr_panels = [("learning rate", [(k, *_series(runs[0].train, k)) for k in lr_keys])]
    if _plot(out / "learning_rate.png", lr_panels):
        written["learning_rate.png"] = "learning rate"
    eval_keys = list(dict.fromkeys(k for run in runs for k in _metric_keys(run.eval)))
    if _plot(out / "eval.png", [(f"eval {k}", lines(evals, k)) for k in eval_keys]):
        written["eval.png"] = "eval metrics"
    if _plot(out / "tokens_per_s.png", [("tokens/s", lines(train, "tokens_per_s"))]):
        written["tokens_per_s.png"] = "tokens/s"
    return written


# -- report.md -------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _run_section(run: RunLog, heading: str) -> list[str]:
    summary = run.summary or {}
    lines = [f"{heading} {run.label}", "", f"- workdir: `{run.workdir}`"]
    recipe = (run.config or {}).get("recipe") or summary.get("recipe")
    if recipe:
        lines.append(f"- recipe: `{recipe}`")
    metric = ((run.config or {}).get("train", {}).get("early_stopping", {}) or {}).get("metric")
    best = summary.get("best_step")
    if best is not None:
        at_best = next((r for r in run.eval if r["step"] == best), None)
        value = f" ({metric} = {_fmt(at_best[metric])})" if at_best and metric in at_best else ""
        lines.append(f"- best step: {best}{value}")
    elif run.summary is None:
        lines.append(f"- best step: not recorded ({run.workdir / SUMMARY_FILE} is missing)")
    else:
        lines.append("- best step: none (no eval metric to select on)")
    exported = summary.get("exported_step")
    if exported is not None:
        where = f" → `{summary['export_dir']}`" if summary.get("export_dir") else ""
        lines.append(f"- exported step: {exported}{where}")
    if run.train:
        first, last = run.train[0], run.train[-1]
        if _numeric(first.get("loss")) and _numeric(last.get("loss")):
            lines.append(f"- train loss: {_fmt(first['loss'])} (step {first['step']}) → {_fmt(last['loss'])} "
                         f"(step {last['step']})")
    lines.append("")

    preset, source = preset_config(run)
    lines += [f"**Config changes from the preset** (`{source}`)" if preset is not None else
              f"**Config changes from the preset**: not available ({source})", ""]
    if preset is not None and run.config is not None:
        diff = config_diff(preset, {k: v for k, v in run.config.items() if k not in ("config_file", "preset")})
        if diff:
            lines += ["| key | preset | this run |", "|---|---|---|"]
            lines += [f"| `{k}` | {_fmt(a)} | {_fmt(b)} |" for k, a, b in diff]
        else:
            lines.append("None: the run used the preset as it is.")
        lines.append("")
    elif preset is not None:
        lines += [f"not available ({run.workdir / CONFIG_FILE} is missing)", ""]

    keys = _metric_keys(run.eval)
    if keys:
        lines += ["**Eval**", "", "| step | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in run.eval:
            mark = " (best)" if row["step"] == best else ""
            lines.append(f"| {row['step']}{mark} | " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
        lines.append("")
    if run.samples:
        lines += ["**Samples**", ""]
        for row in run.samples:
            lines += [f"step {row['step']}, `{row.get('name', '')}`:", "", "```", str(row.get("text", "")), "```", ""]
    return lines


def build_report(workdirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Read the runs, write the plots and report.md into ``out`` (default
    ``<first workdir>/report``); raises ``ReportError`` naming the bad file."""
    if not workdirs:
        raise ReportError("no run directory given")
    runs = [read_run(w) for w in workdirs]
    _unique_labels(runs)
    out = Path(out) if out else runs[0].workdir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(runs, out)
    title = runs[0].label if len(runs) == 1 else ", ".join(r.label for r in runs)
    lines = [f"# Run report: {title}", ""]
    if plots:
        lines += [f"![{t}]({name})" for name, t in plots.items()] + [""]
    missing = [t for name, t in (("train_loss.png", "train loss"), ("learning_rate.png", "learning rate"),
                                 ("eval.png", "eval metrics"), ("tokens_per_s.png", "tokens/s")) if name not in plots]
    if missing:
        lines += [f"No data logged for: {', '.join(missing)}.", ""]
    for run in runs:
        lines += _run_section(run, "##")
    (out / "report.md").write_text("\n".join(lines).rstrip() + "\n")
    return out


def write_report(workdir: str | Path, *more_workdirs: str | Path) -> Path | None:
    """``build_report`` for the trainer's end of run: a failure is one line on stderr, never
    an exception (the run's checkpoints and export are already written)."""
    try:
        return build_report([workdir, *more_workdirs])
    except Exception as e:  # a report must never turn a finished run into a failed one
        print(f"error: report for {workdir}: {one_line(e)}", file=sys.stderr)
        return None


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxft.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories; several are overlaid")
    parser.add_argument("--out", help="report directory (default: <first WORKDIR>/report)")
    args = parser.parse_args(argv)
    out = build_report(args.workdirs, args.out)
    print(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
