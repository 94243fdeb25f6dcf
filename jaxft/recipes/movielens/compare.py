"""Base model vs fine-tuned model on the same test records (``test_raw.jsonl``).

Both models score every record the same way as eval does during training: the record is rendered
with the export's tokenizer and chat template exactly as a training record (same system prompt and
instruction), and p(Yes) = p(Yes) / (p(Yes) + p(No)) of the two answer tokens at the answer
position; the prediction is Yes when p(Yes) > 0.5. The base model is the export's base without any
adapter (the reference loaded its adapter into the base model before scoring "base", so its two
columns were the same model); the tuned model is base + adapter, or the fully tuned weights.

With ``--output preds.jsonl`` the records where the two disagree are also written, as the reference's
``compare_base_vs_lora.py`` writes them: ``preds.disagreements.jsonl`` (all),
``preds.improvements.jsonl`` (the tuned model right, the base wrong) and ``preds.regressions.jsonl``
(the reverse), each row with its history.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxft.data.records import DataError
from jaxft.recipes.movielens import encoding, prompts
from jaxft.recipes.movielens.metrics import scores

TEST_KEYS = ("user_id", "history_titles", "candidate_title", "label")


def read_test_rows(path: Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
            missing = [k for k in TEST_KEYS if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError(f"{path}:{number}: key '{missing[0]}' is missing")
            if row["label"] not in (prompts.POSITIVE, prompts.NEGATIVE):
                raise DataError(f"{path}:{number}: label {row['label']!r} is not Yes or No")
            if not isinstance(row["history_titles"], list):
                raise DataError(f"{path}:{number}: history_titles is not a list")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise DataError(f"{path}: no test records")
    return rows


def score_records(cfg, params, encoded: list[encoding.Encoded], yes_id: int, no_id: int, batch_size: int,
                  pad_id: int, dtype) -> np.ndarray:
    """p(Yes) per record, in fixed-shape batches (one compile per model)."""
    from jaxft.recipes.movielens.scoring import p_yes

    seq_len = int(-(-max(len(e.input_ids) for e in encoded) // 32) * 32)
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids = np.full((batch_size, seq_len), pad_id, np.int32)
        mask = np.zeros((batch_size, seq_len), np.int32)
        index = np.zeros(batch_size, np.int32)
        for i, e in enumerate(chunk):
            ids[i, :len(e.input_ids)] = e.input_ids
            mask[i, :len(e.input_ids)] = 1
            index[i] = max(e.answer_index, 0)
        p = p_yes(cfg, params, ids, mask, index, yes_id=yes_id, no_id=no_id, dtype=dtype)
        out.append(np.asarray(p)[:len(chunk)])
    return np.concatenate(out)


def compare(export: Path, data: Path, *, limit: int | None = None, output: Path | None = None,
            batch_size: int = 8, base_model: str | None = None) -> dict:
    from jaxft.recipes.movielens.recipe import base_params, load_export

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    rows = read_test_rows(data, limit)
    loaded = load_export(str(export), base_model)
    s = loaded.settings
    tokenizer = loaded.tokenizer
    records = [prompts.test_row_record(row, s.get("instruction", prompts.INSTRUCTION),
                                       s.get("system_prompt", prompts.SYSTEM_PROMPT)) for row in rows]
    encoded = encoding.encode_records(tokenizer, records, int(s["cutoff_len"]))
    lost = sum(e.answer_index < 0 for e in encoded)
    if lost:
        raise DataError(f"{data}: {lost} record(s) are longer than cutoff_len={s['cutoff_len']} up to the answer")
    yes_id, no_id = int(s["yes_token_id"]), int(s["no_token_id"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dtype = jnp.dtype(s.get("compute_dtype", "float32"))
    base = base_params(loaded, base_model)
    p_base = score_records(loaded.cfg, base, encoded, yes_id, no_id, batch_size, pad_id, dtype)
    p_tuned = score_records(loaded.cfg, loaded.tuned, encoded, yes_id, no_id, batch_size, pad_id, dtype)
    true = [int(r["label"] == prompts.POSITIVE) for r in rows]
    pred_base, pred_tuned = (p_base > 0.5).astype(int), (p_tuned > 0.5).astype(int)
    lines = [{"user_id": r["user_id"], "candidate_title": r["candidate_title"], "label": r["label"],
              "p_yes_base": float(pb), "p_yes_tuned": float(pt),
              "pred_base": prompts.POSITIVE if b else prompts.NEGATIVE,
              "pred_tuned": prompts.POSITIVE if t else prompts.NEGATIVE}
             for r, pb, pt, b, t in zip(rows, p_base, p_tuned, pred_base, pred_tuned)]
    split = disagreements(lines, rows)
    if output is not None:
        _write_jsonl(Path(output), lines)
        for name, part in split.items():
            _write_jsonl(analysis_path(Path(output), name), part)
    return {"base": scores(pred_base, true), "tuned": scores(pred_tuned, true), "rows": lines,
            "counts": {name: len(part) for name, part in split.items()},
            "export": str(export), "data": str(data), "output": str(output) if output else None}


def disagreements(lines: list[dict], rows: list[dict]) -> dict[str, list[dict]]:
    """The records the two models answer differently: all of them, those the tuning fixed
    (``improvements``) and those it broke (``regressions``); each with its index and history."""
    out: dict[str, list[dict]] = {"disagreements": [], "improvements": [], "regressions": []}
    for index, (line, row) in enumerate(zip(lines, rows)):
        if line["pred_base"] == line["pred_tuned"]:
            continue
        entry = {"index": index, **line, "history_titles": row["history_titles"],
                 "base_correct": line["pred_base"] == line["label"],
                 "tuned_correct": line["pred_tuned"] == line["label"]}
        out["disagreements"].append(entry)
        out["improvements" if entry["tuned_correct"] else "regressions"].append(entry)
    return out


def analysis_path(output: Path, name: str) -> Path:
    return output.with_name(f"{output.stem}.{name}.jsonl")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def format_report(result: dict, examples: int = 5) -> str:
    base, tuned = result["base"], result["tuned"]
    out = [f"{result['data']}: {base['n']} records; export {result['export']}", "",
           f"{'':28}{'base':>10}{'tuned':>10}"]
    for name, key in (("accuracy", "accuracy"), ("precision (Yes positive)", "precision"),
                      ("recall (Yes positive)", "recall"), ("F1 (Yes positive)", "f1")):
        out.append(f"{name:28}{base[key]:>10.4f}{tuned[key]:>10.4f}")
    out.append(f"{'majority-class accuracy':28}{base['majority_accuracy']:>10.4f}{tuned['majority_accuracy']:>10.4f}"
               f"   (always {base['majority_label']})")
    for name in ("tp", "fp", "fn", "tn"):
        out.append(f"{'confusion ' + name.upper():28}{base['confusion'][name]:>10}{tuned['confusion'][name]:>10}")
    counts = result.get("counts")
    if counts:
        out += ["", f"disagreements {counts['disagreements']}: the tuning fixed {counts['improvements']}, "
                    f"broke {counts['regressions']}"]
    if examples > 0:
        out += ["", "examples (label: base p(Yes) -> tuned p(Yes)):"]
        for row in result["rows"][:examples]:
            out.append(f"  user {row['user_id']}, {row['candidate_title']!r}, {row['label']}: "
                       f"{row['p_yes_base']:.3f} -> {row['p_yes_tuned']:.3f}")
    if result.get("output"):
        output = Path(result["output"])
        out += ["", f"per-record predictions: {output}; disagreements, improvements and regressions: "
                    f"{analysis_path(output, '{disagreements,improvements,regressions}')}"]
    return "\n".join(out)
