"""The reference's .pth checkpoints: torch writes one in PlainGPT's layout (train.py at 47a5e8e), jaxft
imports it, and its logits equal a torch transcription of PlainGPT's model (model.py, attention.py)."""

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from jaxft.models import decoder  # noqa: E402
from jaxft.recipes.minigpt.reference import load_reference  # noqa: E402


# ---------------------------------------------------------------- PlainGPT's model, transcribed in torch


class RefAttention(nn.Module):
    def __init__(self, d, n_head, n_kv_head):
        super().__init__()
        self.n_head, self.n_kv_head, self.d_head = n_head, n_kv_head, d // n_head
        self.q_proj = nn.Linear(d, n_head * self.d_head)
        self.k_proj = nn.Linear(d, n_kv_head * self.d_head)
        self.v_proj = nn.Linear(d, n_kv_head * self.d_head)
        self.out_proj = nn.Linear(n_head * self.d_head, d)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_head, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_head, self.d_head).transpose(1, 2)
        g = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).contiguous().view(b, t, -1))


class RefSwiGLU(nn.Module):
    def __init__(self, d):
        super().__init__()
        inner = int((2 / 3) * 4 * d)
        self.w1 = nn.Linear(d, inner, bias=False)
        self.w3 = nn.Linear(d, inner, bias=False)
        self.w2 = nn.Linear(inner, d, bias=False)

    def forward(self, x):
        return self.w2(self.w1(x) * F.silu(self.w3(x)))


class RefBlock(nn.Module):  # ParallelBlock: x + attn(n1 x) + ffn(n2 x)
    def __init__(self, d, n_head, n_kv_head):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mha = RefAttention(d, n_head, n_kv_head)
        self.ffn = RefSwiGLU(d)

    def forward(self, x):
        return x + self.mha(self.n1(x)) + self.ffn(self.n2(x))


def sincos(max_len, d):
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    i = torch.arange(0, d, 2, dtype=torch.float32).unsqueeze(0)
    angle = pos / (10000 ** (i / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    return pe


class RefLM(nn.Module):  # DecoderOnlyLM, eval mode (dropout off)
    def __init__(self, vocab, d, n_head, n_layer, max_seq_len, n_kv_head):
        super().__init__()
        self.d = d
        self.tok_emb = nn.Embedding(vocab, d)
        self.pos_emb = nn.Embedding(max_seq_len, d)  # in the reference's state dict, unused by its forward
        self.blocks = nn.ModuleList([RefBlock(d, n_head, n_kv_head) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("pos_enc", sincos(max_seq_len, d), persistent=False)
        self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx):
        x = self.tok_emb(idx) * math.sqrt(self.d) + self.pos_enc[: idx.shape[1]].unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


CONFIG = dict(d_model=48, n_layer=2, n_head=4, n_kv_head=2, seq_len=32, dropout=0.1, batch_size=4, lr=3e-4,
              spm_model="./data/spm_en8k.model")


def _reference_model(vocab=101, **overrides):
    torch.manual_seed(0)
    c = dict(CONFIG, **overrides)
    model = RefLM(vocab, c["d_model"], c["n_head"], c["n_layer"], c["seq_len"], c["n_kv_head"] or c["n_head"])
    with torch.no_grad():  # random norms and biases, so a swapped LayerNorm or a lost bias shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".n" in name or "ln_f" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    return model.eval(), c


def _save_like_train_py(model, config, path):
    # train.py's periodic save: {"model", "opt", "config", "step", "best"}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "config": config, "step": 7,
                "best": 5.5}, path)


@pytest.mark.parametrize("n_kv_head", [2, 0], ids=["gqa", "kv-default"])
def test_imported_logits_equal_the_torch_transcription(tmp_path, n_kv_head):
    model, config = _reference_model(n_kv_head=n_kv_head)
    _save_like_train_py(model, config, tmp_path / "ckpt_minGPT.pth")
    cfg, params = load_reference(tmp_path / "ckpt_minGPT.pth")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (48, 2, 4)
    assert cfg.num_key_value_heads == (n_kv_head or 4) and cfg.intermediate_size == 128
    ids = np.random.default_rng(0).integers(0, 101, (2, 19))
    with torch.no_grad():
        want = model(torch.as_tensor(ids)).numpy()
    got, _ = decoder.forward(cfg, params, jnp.asarray(ids, jnp.int32))
    assert np.abs(want).max() > 1.0  # the logits are not near zero, so 1e-4 is a real bound
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)


def test_swapped_mlp_projections_would_show(tmp_path):
    # w1 and w3 play different roles (silu on w3): importing them swapped must change the logits
    model, config = _reference_model()
    state = model.state_dict()
    for i in range(config["n_layer"]):
        a, b = f"blocks.{i}.ffn.w1.weight", f"blocks.{i}.ffn.w3.weight"
        state[a], state[b] = state[b].clone(), state[a].clone()
    torch.save({"model": state, "config": config}, tmp_path / "swapped.pth")
    cfg, params = load_reference(tmp_path / "swapped.pth")
    ids = np.arange(12)[None]
    with torch.no_grad():
        want = model(torch.as_tensor(ids)).numpy()
    got, _ = decoder.forward(cfg, params, jnp.asarray(ids, jnp.int32))
    assert np.abs(np.asarray(got) - want).max() > 1e-2


def _spm(tmp_path, vocab):
    spm = pytest.importorskip("sentencepiece")
    text = tmp_path / "corpus.txt"
    words = ["the", "model", "returns", "a", "list", "of", "names", "given", "string", "value", "file"]
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)), encoding="utf-8")
    # SentencePiece's defaults (nmt_nfkc normalisation), as a user of the reference trains one
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "spm"), vocab_size=vocab,
                                   hard_vocab_limit=False,
                                   model_type="unigram", minloglevel=2)
    return tmp_path / "spm.model"


def test_import_pth_command_writes_a_model_that_samples(tmp_path):
    spm_file = _spm(tmp_path, 30)
    model, config = _reference_model(vocab=30)
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "ckpt_best.pth")
    run = [sys.executable, "-m", "jaxft.recipes.minigpt"]
    out = subprocess.run(run + ["import-pth", "--pth", str(tmp_path / "ckpt_best.pth"), "--spm", str(spm_file),
                                "--out", str(tmp_path / "imported")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from jaxft.recipes.minigpt.export import load_for_inference

    cfg, params, tokenizer = load_for_inference(tmp_path / "imported")
    ids = np.asarray([tokenizer.encode("the model returns", add_special_tokens=False)])
    with torch.no_grad():
        want = model(torch.as_tensor(ids)).numpy()
    got, _ = decoder.forward(cfg, params, jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
    sampled = subprocess.run(run + ["sample", "--ckpt", str(tmp_path / "imported"), "--prompt", "the model",
                                    "--max_new", "5", "--min_new", "5"], capture_output=True, text=True, timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("### Prompt 1\nthe model\n---\n")


def test_bad_checkpoints_are_one_line(tmp_path):
    run = [sys.executable, "-m", "jaxft.recipes.minigpt", "import-pth", "--spm", str(_spm(tmp_path, 30)),
           "--out", str(tmp_path / "o")]
    model, config = _reference_model(vocab=30)
    torch.save(model.state_dict(), tmp_path / "bare.pth")  # no "config": quick_sample.py refuses it too
    state = dict(model.state_dict(), **{"blocks.0.mha.q_proj.lora_A": torch.zeros(48, 4)})
    torch.save({"model": state, "config": config}, tmp_path / "lora.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    for name, needle in [("bare.pth", "'config'"), ("lora.pth", "'blocks.0.mha.q_proj.lora_A'"),
                         ("junk.pth", "not a readable torch file"), ("missing.pth", "no such file")]:
        out = subprocess.run(run + ["--pth", str(tmp_path / name)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, (name, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
