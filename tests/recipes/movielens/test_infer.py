"""infer: answers by generation, as the reference's infer_lora.py; greedy texts against transformers + peft."""

from __future__ import annotations

import json

import pytest

from jaxft.recipes.movielens.cli import main
from jaxft.recipes.movielens.infer import UNKNOWN, answer_scores, extract_answer, infer, Decoding
from tests.recipes.movielens.test_compare import export_dir  # noqa: F401 - the fixture
from tests.recipes.movielens.test_compare import reference_model, reference_prompt_ids

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def _reference_extract(response: str) -> str:
    # batch_infer_lora.py's extract_answer at c5d1f1c, transcribed
    import re

    if "assistant" in response:
        response = response.split("assistant")[-1]
    response = re.sub(r"<think>.*?</think>", "", response, flags=re.DOTALL).strip()
    low = response.lower()
    if low.startswith("yes"):
        return "Yes"
    if low.startswith("no"):
        return "No"
    if "yes" in low and "no" not in low:
        return "Yes"
    if "no" in low and "yes" not in low:
        return "No"
    return "Unknown"


@pytest.mark.parametrize("text", ["Yes", "no.", "<think>\nmaybe no\n</think>\n\nYes, they will", "I think yes",
                                  "nope", "yes or no", "", "Sure!", "assistant\nNo", "It is not known",
                                  "The answer: YES"])
def test_extract_answer_is_the_references(text):
    assert extract_answer(text) == _reference_extract(text)


def test_answer_scores_count_unknown_as_wrong():
    sc = answer_scores(["Yes", UNKNOWN, "No", "Yes"], ["Yes", "Yes", "No", "No"])
    assert sc["accuracy"] == 0.5 and sc["unknown"] == 1
    assert sc["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1} and sc["f1"] == pytest.approx(0.5)


def _reference_greedy(export, tok, rows, adapter: bool, max_new: int):
    model = reference_model(export, adapter)
    texts = []
    for row in rows:
        ids = reference_prompt_ids(tok, row)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def test_greedy_answers_match_transformers_and_peft(export_dir, prepared_dir):  # noqa: F811
    export, tok = export_dir
    data = prepared_dir / "test_raw.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    result = infer(export, data=data, base=True, decoding=Decoding(max_new_tokens=6, greedy=True), batch_size=3)
    for name, adapter in (("base", False), ("tuned", True)):
        got = result["models"][name]
        assert got["texts"] == _reference_greedy(export, tok, rows, adapter, 6)
        assert got["answers"] == [extract_answer(t) for t in got["texts"]]
        assert got["scores"]["n"] == len(rows)
    assert result["models"]["base"]["texts"] != result["models"]["tuned"]["texts"]


def test_infer_command_and_bad_input(export_dir, prepared_dir, capsys):  # noqa: F811
    export, _ = export_dir
    data = prepared_dir / "test_raw.jsonl"
    assert main(["infer", "--export", str(export), "--data", str(data), "--max-new-tokens", "4", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tuned: accuracy ") and "unknown" in out
    assert main(["infer", "--export", str(export), "--prompt", "User's last 1 watched movies:\n1. A (rating ≈ 4.0)",
                 "--greedy", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("tuned: ")
    assert main(["infer", "--export", str(export), "--data", str(data), "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --limit must be at least 1, got 0"
