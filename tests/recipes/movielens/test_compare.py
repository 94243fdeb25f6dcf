"""compare: base vs base + adapter on test_raw.jsonl, checked against transformers + peft."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxft.recipes.movielens import encoding, prompts
from jaxft.recipes.movielens.cli import main
from jaxft.recipes.movielens.compare import compare

import torch
import peft


@pytest.fixture
def export_dir(tmp_path, demo_tokenizer_dir):
    """An export as export_fn writes it for LoRA over a saved base: base/, adapter/, tokenizer/, movielens.json."""
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_tokenizer_dir))
    config = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=256, tie_word_embeddings=True,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    export = tmp_path / "export"
    model.save_pretrained(export / "base")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           init_lora_weights=False)  # random B: the tuned model really differs
    tuned = peft.get_peft_model(model, lora)
    tuned.save_pretrained(export / "adapter")
    tok.save_pretrained(export / "tokenizer")
    yes, no = encoding.answer_token_ids(tok)
    (export / "movielens.json").write_text(json.dumps({
        "base_model": "base", "tuned": "adapter", "yes_token_id": yes, "no_token_id": no, "cutoff_len": 256,
        "compute_dtype": "float32", "dtype": "float32", "quantize": "none",
        "system_prompt": prompts.SYSTEM_PROMPT, "instruction": prompts.INSTRUCTION}))
    return export, tok


def reference_model(export, adapter: bool):
    """The export's base in transformers (eager attention), with its PEFT adapter when ``adapter``."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(export / "base", attn_implementation="eager").eval()
    return peft.PeftModel.from_pretrained(model, export / "adapter").eval() if adapter else model


def reference_prompt_ids(tok, row) -> torch.Tensor:
    """[1, n]: a test row's chat prompt, as the reference's scripts tokenize it."""
    messages = prompts.chat_messages(prompts.test_row_record(row), with_answer=False)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def _reference_p_yes(export, tok, rows, adapter: bool):
    model = reference_model(export, adapter)
    yes, no = encoding.answer_token_ids(tok)
    out = []
    for row in rows:
        with torch.no_grad():
            logits = model(reference_prompt_ids(tok, row)).logits[0, -1].double()
        out.append(float(torch.softmax(logits[[yes, no]], -1)[0]))
    return np.array(out)


def test_compare_matches_transformers_and_peft(export_dir, prepared_dir, tmp_path, capsys):
    export, tok = export_dir
    data = prepared_dir / "test_raw.jsonl"
    preds = tmp_path / "preds.jsonl"
    assert main(["compare", "--export", str(export), "--data", str(data), "--output", str(preds),
                 "--batch-size", "3"]) == 0
    report = capsys.readouterr().out
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == len(rows) == 2
    assert [set(line) for line in lines] == [{"user_id", "candidate_title", "label", "p_yes_base", "p_yes_tuned",
                                             "pred_base", "pred_tuned"}] * 2
    assert [(line["user_id"], line["candidate_title"], line["label"]) for line in lines] == [
        (r["user_id"], r["candidate_title"], r["label"]) for r in rows]
    base = np.array([line["p_yes_base"] for line in lines])
    tuned = np.array([line["p_yes_tuned"] for line in lines])
    np.testing.assert_allclose(base, _reference_p_yes(export, tok, rows, adapter=False), atol=1e-5)
    np.testing.assert_allclose(tuned, _reference_p_yes(export, tok, rows, adapter=True), atol=1e-5)
    assert np.abs(base - tuned).max() > 1e-4  # two different models, not the adapter twice
    for line in lines:
        assert line["pred_base"] == ("Yes" if line["p_yes_base"] > 0.5 else "No")
        assert line["pred_tuned"] == ("Yes" if line["p_yes_tuned"] > 0.5 else "No")
    assert "majority-class accuracy" in report and "confusion TP" in report and "precision (Yes positive)" in report
    # the disagreement files, as the reference writes them (here beside --output)
    written = {name: [json.loads(x) for x in (tmp_path / f"preds.{name}.jsonl").read_text().splitlines()]
               for name in ("disagreements", "improvements", "regressions")}
    differ = [i for i, line in enumerate(lines) if line["pred_base"] != line["pred_tuned"]]
    assert [d["index"] for d in written["disagreements"]] == differ
    assert len(written["improvements"]) + len(written["regressions"]) == len(differ)


def test_compare_limit_and_bad_inputs(export_dir, prepared_dir, tmp_path, capsys):
    export, _ = export_dir
    data = prepared_dir / "test_raw.jsonl"
    result = compare(export, data, limit=1)
    assert result["base"]["n"] == 1 and len(result["rows"]) == 1
    local = compare(export, data, limit=1, base_model=str(export / "base"))  # --base-model: a local copy
    assert local["rows"] == result["rows"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n" + json.dumps({"user_id": 1}) + "\n")
    assert main(["compare", "--export", str(export), "--data", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: key 'history_titles' is missing"
    assert main(["compare", "--export", str(tmp_path), "--data", str(data)]) == 2
    assert "movielens.json" in capsys.readouterr().err


def test_disagreements_split_into_improvements_and_regressions():
    from jaxft.recipes.movielens.compare import disagreements

    labels = ["Yes", "No", "Yes", "No", "Yes"]
    base = ["Yes", "Yes", "No", "No", "No"]
    tuned = ["No", "No", "Yes", "No", "No"]
    lines = [{"label": y, "pred_base": b, "pred_tuned": t} for y, b, t in zip(labels, base, tuned)]
    rows = [{"history_titles": [f"h{i}"]} for i in range(5)]
    split = disagreements(lines, rows)
    assert [d["index"] for d in split["disagreements"]] == [0, 1, 2]
    assert [d["index"] for d in split["improvements"]] == [1, 2]  # base wrong, tuned right
    assert [d["index"] for d in split["regressions"]] == [0]
    assert split["regressions"][0]["history_titles"] == ["h0"] and split["regressions"][0]["base_correct"]
