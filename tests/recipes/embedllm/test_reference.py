"""The reference's saved components + PEFT adapter imported: jaxft's logits equal a torch transcription of the
reference forward (CharlieYates1/EmbedLLM at 6d80eb8: model.py ``PerceiverQwenModel.forward``,
perceiver_module.py ``PerceiverIOModule`` and ``CrossAttentionCompressor``) on tiny random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from jaxft.recipes.embedllm.cli import main
from jaxft.recipes.embedllm.export import load_embedllm

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class PerceiverIOModule(nn.Module):
    """perceiver_module.py: a transformers PerceiverModel behind a Linear from the LLM width to its d_model."""

    def __init__(self, perceiver, llm_width):
        super().__init__()
        self.perceiver = perceiver
        self.input_projection = nn.Linear(llm_width, perceiver.config.d_model)

    def forward(self, inputs):
        return self.perceiver(inputs=self.input_projection(inputs), attention_mask=None).last_hidden_state


class CrossAttentionCompressor(nn.Module):
    """perceiver_module.py: one learned query over the latents, LayerNorm(attention + query), dropout."""

    def __init__(self, latent_dim, num_heads=8, dropout=0.1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, latent_dim))
        self.cross_attention = nn.MultiheadAttention(latent_dim, num_heads, dropout=dropout, batch_first=True)
        self.layer_norm = nn.LayerNorm(latent_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, latents):
        query = self.query.expand(latents.shape[0], -1, -1)
        out, _ = self.cross_attention(query=query, key=latents, value=latents)
        return self.dropout(self.layer_norm(out + query))


def reference_logits(qwen, perceiver, compressor, projection, turns, last_turn):
    """model.py forward: each earlier turn's embeddings through the Perceiver, the latents concatenated and
    compressed, projected; with no earlier turn the projection of a zero latent; then [that, last turn]."""
    embed = qwen.get_input_embeddings()
    if turns:
        latents = torch.cat([perceiver(embed(t)) for t in turns], dim=1)
        prefix = projection(compressor(latents))
    else:
        prefix = projection(torch.zeros(1, 1, projection.in_features))
    x = torch.cat([prefix, embed(last_turn)], dim=1)
    return qwen(inputs_embeds=x, attention_mask=torch.ones(1, x.shape[1], dtype=torch.long)).logits


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """A checkpoint as the reference's train.py writes it, of tiny random models, and those models."""
    import peft

    from jaxft.tokenization.demo import demo_tokenizer

    root = tmp_path_factory.mktemp("ref")
    tok = demo_tokenizer("bpe", 512)
    torch.manual_seed(0)
    qcfg = transformers.Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                    max_position_embeddings=128, tie_word_embeddings=False)
    base = transformers.AutoModelForCausalLM.from_config(qcfg, attn_implementation="eager")
    base.save_pretrained(root / "base")
    pcfg = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=12, num_self_attends_per_block=2,
                                        num_self_attention_heads=2, num_cross_attention_heads=1)
    (root / "perceiver").mkdir()
    pcfg.to_json_file(str(root / "perceiver" / "config.json"))
    perceiver = PerceiverIOModule(transformers.PerceiverModel(pcfg), qcfg.hidden_size)
    compressor = CrossAttentionCompressor(16)
    projection = nn.Linear(16, qcfg.hidden_size)
    qwen = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=SEVEN))
    with torch.no_grad():  # random everything, so a mix-up of factors, norms or biases cannot hide
        for module in (perceiver, compressor, projection):
            for name, p in module.named_parameters():
                p.add_(0.2 * torch.randn_like(p)) if ("bias" in name or "norm" in name) else None
        for name, p in qwen.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    ckpt = root / "final"
    qwen.save_pretrained(ckpt)  # the adapter, as train.py saves model.qwen_model
    torch.save({"compressor": compressor.state_dict(), "projection": projection.state_dict(),
                "perceiver": perceiver.state_dict()}, ckpt / "additional_components.pt")
    tok.save_pretrained(ckpt)
    models = [m.eval() for m in (qwen, perceiver, compressor, projection)]
    return root, ckpt, models


@pytest.mark.parametrize("turn_lengths", [(5, 3, 7), ()], ids=["three turns", "no history"])
def test_imported_logits_equal_the_reference_forward(reference_checkpoint, turn_lengths, tmp_path):
    root, ckpt, (qwen, perceiver, compressor, projection) = reference_checkpoint
    assert main(["import-reference", "--checkpoint", str(ckpt), "--out", str(tmp_path / "export"),
                 "--llm", str(root / "base"), "--perceiver", str(root / "perceiver")]) == 0
    chat = load_embedllm(tmp_path / "export")
    rng = np.random.default_rng(len(turn_lengths))
    vocab = qwen.config.vocab_size
    turns = [rng.integers(3, vocab, size=n) for n in turn_lengths]
    last = rng.integers(3, vocab, size=6)
    with torch.no_grad():
        ref = reference_logits(qwen, perceiver, compressor, projection,
                               [torch.tensor(t)[None] for t in turns], torch.tensor(last)[None]).numpy()

    layout = chat.layout
    hist_ids = np.zeros((1, layout.max_turns, layout.history_width), np.int32)
    hist_mask = np.zeros_like(hist_ids)
    for i, t in enumerate(turns):
        hist_ids[0, i, :len(t)], hist_mask[0, i, :len(t)] = t, 1
    ids = np.concatenate([[0], last])[None].astype(np.int32)
    ours = chat.logits({"input_ids": ids, "attention_mask": np.ones_like(ids), "history_ids": hist_ids,
                        "history_mask": hist_mask})
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    assert (layout.separator, layout.append_eos) == ("<|im_start|>", False)  # the reference's turn format


def test_missing_components_are_named(reference_checkpoint, tmp_path, capsys):
    root, ckpt, _ = reference_checkpoint
    args = ["import-reference", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
            "--llm", str(root / "base"), "--perceiver", str(root / "perceiver")]
    assert main(args) == 2
    assert "additional_components.pt: not found" in capsys.readouterr().err
    torch.save({"compressor": {}, "projection": {}}, tmp_path / "additional_components.pt")
    assert main(args) == 2
    assert "entry 'perceiver' is missing" in capsys.readouterr().err
