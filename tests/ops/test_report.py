"""Run reports from a fabricated run log: plots, config diff against the preset, best step, samples."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxft import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PRESET_FILE = '''
from ml_collections import ConfigDict

def get_config(preset="demo"):
    c = ConfigDict()
    c.recipe = "toy"
    c.train = ConfigDict(dict(steps=100, batch_size=8, early_stopping=ConfigDict(dict(metric="loss", mode="min"))))
    c.lora = ConfigDict(dict(rank=16, targets=("q_proj", "v_proj")))
    if preset == "small":
        c.train.steps = 6
    return c
'''


def fabricate_run(workdir: Path, *, steps=6, eval_every=3, lr_groups=("lora",), loss0=5.0, resumed_at=None) -> Path:
    """A run directory as the trainer writes it: metrics.jsonl, config.json, summary.json."""
    workdir.mkdir(parents=True)
    (workdir.parent / "configs").mkdir(exist_ok=True)
    (workdir.parent / "configs" / "toy.py").write_text(PRESET_FILE)
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "split": "train", "loss": loss0 - 0.5 * step, "tokens_per_s": 1000.0 + step,
               "grad_norm": 1.0}
        for i, g in enumerate(lr_groups):
            row[f"lr/{g}"] = 1e-3 * (i + 1) * step / steps
        row["lr"] = max(row[f"lr/{g}"] for g in lr_groups)
        rows.append(row)
        if step % eval_every == 0:
            rows.append({"step": step, "split": "eval", "loss": 4.0 - step * 0.1 if step != 6 else 3.9,
                         "accuracy": 0.1 * step})
            rows.append({"step": step, "split": "samples", "name": "generation", "text": f"text at step {step}"})
        if resumed_at == step:  # preempted after this step: the resumed run logs steps 2.. again
            rows.append({"step": 2, "split": "train", "loss": 99.0, "tokens_per_s": 1.0, "lr": 0.0})
    with open(workdir / "metrics.jsonl", "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {"recipe": "toy", "train": {"steps": steps, "batch_size": 4,
                                         "early_stopping": {"metric": "loss", "mode": "min"}},
              "lora": {"rank": 16, "targets": ["q_proj", "v_proj"]}, "seed": 3}
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "summary.json").write_text(json.dumps({
        "best_step": 3, "exported_step": 3, "export_dir": str(workdir / "export"), "preset": "small",
        "config_file": str(workdir.parent / "configs" / "toy.py")}))
    return workdir


def assert_png_with_content(file: Path):
    import matplotlib.image

    data = file.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000, file
    pixels = matplotlib.image.imread(file)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # lines and text, not a blank canvas


def test_report_of_one_run(tmp_path):
    run = fabricate_run(tmp_path / "run")
    out = report.write_report(run)
    assert out == run / "report"
    for name in ("train_loss.png", "learning_rate.png", "eval.png", "tokens_per_s.png"):
        assert_png_with_content(out / name)
    md = (out / "report.md").read_text()
    assert "- best step: 3 (loss = 3.7)" in md
    assert "- exported step: 3" in md
    assert "![train loss](train_loss.png)" in md and "![eval metrics](eval.png)" in md
    # the preset is configs/toy.py:small; the run changed batch_size and added seed
    assert f"(`{run.parent / 'configs' / 'toy.py'}:small`)" in md
    assert "| `train.batch_size` | 8 | 4 |" in md
    assert "| `seed` | (absent) | 3 |" in md
    assert "train.steps" not in md.split("**Eval**")[0].split("Config changes")[1]  # equal to the preset
    assert "| 3 (best) | 3.7 | 0.3 |" in md
    assert "step 3, `generation`:" in md and "text at step 6" in md
    assert "- train loss: 4.5 (step 1) → 2 (step 6)" in md


def test_resumed_steps_keep_the_later_row(tmp_path):
    run = report.read_run(fabricate_run(tmp_path / "run", resumed_at=4))
    assert [r["step"] for r in run.train] == [1, 2, 3, 4, 5, 6]
    assert run.train[1]["loss"] == 99.0


def test_overlay_of_runs_with_different_groups(tmp_path):
    a = fabricate_run(tmp_path / "a" / "run", lr_groups=("lora", "head"))
    b = fabricate_run(tmp_path / "b" / "run", loss0=6.0)
    single = report.build_report([a], out=tmp_path / "single")
    out = report.build_report([a, b])
    assert out == a / "report"
    for name in ("train_loss.png", "learning_rate.png", "eval.png", "tokens_per_s.png"):
        assert_png_with_content(out / name)
        assert (out / name).read_bytes() != (single / name).read_bytes()
    md = (out / "report.md").read_text()
    assert md.startswith("# Run report: a/run, b/run")  # same basename: labelled by parent
    assert md.count("- best step: 3") == 2


def test_missing_pieces_are_reported_not_raised(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    out = report.build_report([run])
    assert (out / "train_loss.png").is_file() and not (out / "eval.png").exists()
    md = (out / "report.md").read_text()
    assert "No data logged for: learning rate, eval metrics, tokens/s." in md
    assert "not available (no config_file recorded" in md
    assert f"- best step: not recorded ({run / 'summary.json'} is missing)" in md


def test_bad_log_is_one_line_naming_the_row(tmp_path, capsys):
    run = fabricate_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    assert report.write_report(run) is None
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: report for") and f"{run / 'metrics.jsonl'}:" in err and "\n" not in err
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err


def test_cli_rebuilds_the_report(tmp_path):
    run = fabricate_run(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "jaxft.report", str(run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run / "report" / "report.md")
    assert "best step: 3" in (run / "report" / "report.md").read_text()
