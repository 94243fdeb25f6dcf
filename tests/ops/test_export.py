"""Hub export: what a push uploads loads with from_pretrained; offline it is one line and the export stays."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft import export
from jaxft import lora as jlora

HUB_BASE = "Qwen/Qwen3-0.6B"  # recorded as the adapter's base; the tests load the tiny local one


@pytest.fixture(scope="module")
def lm_export(tiny_dir, tmp_path_factory):
    """An lm-style export (PEFT adapter + merged model) of a tiny qwen3 with a non-zero LoRA."""
    base = tiny_dir("qwen3")
    cfg, params = jaxft.load_pretrained(base)
    lora = jlora.init(jax.random.key(0), cfg, params, rank=4, alpha=8)
    rng = np.random.default_rng(0)
    for _, ab in lora.items():
        ab["b"] = jnp.asarray(0.1 * rng.standard_normal(ab["b"].shape), jnp.float32)
    directory = tmp_path_factory.mktemp("run") / "export"
    jlora.save_peft(directory / "adapter", cfg, lora, base_model_name_or_path=HUB_BASE)
    jaxft.save_pretrained(directory / "merged", cfg, jlora.merge(cfg, params, lora))
    return base, directory


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _materialize(plan, out: Path) -> Path:
    for path, src in plan:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(src if isinstance(src, bytes) else src.read_bytes())
    return out


def test_uploaded_folder_loads_in_transformers_and_peft(lm_export, tmp_path):
    import peft
    import torch
    import transformers

    base, directory = lm_export
    plan = export.upload_plan(directory, "someone/tiny-qwen3-lora")
    paths = [p for p, _ in plan]
    assert paths == sorted(_digest(directory)) + ["README.md"]
    hub = _materialize(plan, tmp_path / "hub")

    ids = torch.tensor([[1, 5, 9, 33, 7, 100, 2, 64]])
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(hub / "merged").eval()(ids).logits.numpy()
        base_model = transformers.AutoModelForCausalLM.from_pretrained(base).eval()
        plain = base_model(ids).logits.numpy()
        adapted = peft.PeftModel.from_pretrained(base_model, hub / "adapter").eval()(ids).logits.numpy()
    assert np.abs(adapted - plain).max() > 1e-2  # the adapter changes the model
    assert np.abs(adapted - merged).max() <= 1e-4

    card = (hub / "README.md").read_text()
    assert card.startswith(f"---\nbase_model:\n- {HUB_BASE}\nlibrary_name: transformers\n")
    assert 'PeftModel.from_pretrained(base, "someone/tiny-qwen3-lora", subfolder="adapter")' in card
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny-qwen3-lora", subfolder="merged")' in card


def test_push_is_one_commit_of_the_plan(lm_export, monkeypatch):
    import huggingface_hub

    _, directory = lm_export
    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw)) and
                        f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit",
                        lambda self, repo_id, operations, **kw: calls.setdefault("commit", (repo_id, operations)))
    url = export.push(directory / "merged", "someone/tiny-merged", private=True)
    assert url == "https://huggingface.co/someone/tiny-merged"
    assert calls["repo"] == ("someone/tiny-merged", {"repo_type": "model", "private": True, "exist_ok": True})
    repo, operations = calls["commit"]
    assert sorted(op.path_in_repo for op in operations) == sorted(list(_digest(directory / "merged")) + ["README.md"])
    card = next(op for op in operations if op.path_in_repo == "README.md").path_or_fileobj
    card = card.read() if hasattr(card, "read") else card
    assert b'AutoModelForCausalLM.from_pretrained("someone/tiny-merged")' in card
    assert not (directory / "merged" / "README.md").exists()  # the card is not written into the export


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("offline_flag", ["0", "1"])
def test_offline_push_is_one_line_and_the_export_stays(lm_export, offline_flag):
    _, directory = lm_export
    before = _digest(directory)
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_TOKEN="hf_not_a_token",
               HF_HUB_OFFLINE=offline_flag, HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    proc = subprocess.run([sys.executable, "-m", "jaxft.export", "push", str(directory), "someone/tiny"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: hub push of {directory} to someone/tiny failed: ")
    assert lines[0].endswith("(the local export is intact)")
    assert _digest(directory) == before


def test_broken_exports_are_refused_before_any_upload(lm_export, tmp_path, capsys):
    _, directory = lm_export
    broken = _materialize(export.upload_plan(directory / "merged", "a/b")[:-1], tmp_path / "merged")
    (broken / "model.safetensors").unlink()
    assert export.push(broken, "someone/x") is None
    err = capsys.readouterr().err.strip()
    assert err == (f"error: hub push of {broken} to someone/x failed: {broken}: config.json without weights "
                   "(model.safetensors or pytorch_model.bin) (the local export is intact)")

    index = {"weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(export.ExportError, match="shard files missing: model-00001-of-00002.safetensors"):
        export.check_export(broken)
    adapter = _materialize(export.upload_plan(directory / "adapter", "a/b")[:-1], tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(export.ExportError, match="adapter_config.json without adapter_model.safetensors"):
        export.check_export(adapter)
    assert export.main(["push", str(tmp_path / "nowhere"), "someone/x"]) == 2
    assert "no such export directory" in capsys.readouterr().err
    assert export.push(directory, "not a repo id") is None
    assert "hub repo 'not a repo id': expected USER/NAME" in capsys.readouterr().err


def test_condenser_card_names_both_base_models(lm_export, tmp_path):
    _, directory = lm_export
    condenser = _materialize(export.upload_plan(directory / "adapter", "a/b")[:-1], tmp_path / "c" / "adapter").parent
    (condenser / "condenser.json").write_text(json.dumps({
        "format": "jaxft-condenser", "encoder": {"source": "meta-llama/Llama-3.2-1B", "bundled": False},
        "decoder": {"source": "mistralai/Mistral-7B-Instruct-v0.2", "bundled": False}}))
    assert export.base_models(condenser) == [HUB_BASE, "meta-llama/Llama-3.2-1B", "mistralai/Mistral-7B-Instruct-v0.2"]
    card = export.model_card(condenser, "someone/condenser")
    assert card.startswith("---\nbase_model:\n- Qwen/Qwen3-0.6B\n- meta-llama/Llama-3.2-1B\n"
                           "- mistralai/Mistral-7B-Instruct-v0.2\nlibrary_name: peft\n")
    assert "- context-compression" in card and "load_condenser" in card

    # a local base path is named in the text, not as hub metadata
    (condenser / "extra.json").write_text(json.dumps({"base_models": [str(tmp_path)]}))
    card = export.model_card(condenser, "someone/condenser")
    assert str(tmp_path) not in card.split("---")[1] and f"`{tmp_path}`; pass the base model yourself" in card


def test_check_cli_lists_the_upload(lm_export, capsys):
    _, directory = lm_export
    assert export.main(["check", str(directory)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "README.md\t(generated model card)"
    assert "adapter/adapter_config.json\t" in out[0]


def test_embedllm_card_names_its_llm_and_bundled_parts(lm_export, tmp_path):
    _, directory = lm_export
    out = _materialize(export.upload_plan(directory / "adapter", "a/b")[:-1], tmp_path / "e" / "adapter").parent
    (out / "embedllm.json").write_text(json.dumps({
        "format": "jaxft-embedllm", "version": 1, "llm": {"source": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                          "bundled": False, "quantize": "none"},
        "perceiver": {"d_model": 64}}))
    assert export.base_models(out) == [HUB_BASE, "HuggingFaceTB/SmolLM2-135M-Instruct"]
    card = export.model_card(out, "someone/embed")
    assert "- HuggingFaceTB/SmolLM2-135M-Instruct\n" in card.split("---")[1]
    assert "A `jaxft-embedllm` export: `embedllm.json` describes it." in card

    (out / "embedllm.json").write_text(json.dumps({"format": "jaxft-embedllm", "llm": {"source": "", "bundled": True}}))
    assert export.base_models(out) == [HUB_BASE]
    assert "The llm base model has no hub source" in export.model_card(out, "someone/embed")
