"""GGUF export of the Llama-shaped setting, re-read by jaxft's GGUF importer and transformers' GGUF loader."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxft
from jaxft.checkpoint.gguf_export import write_gguf
from jaxft.models import decoder
from jaxft.models.config import DecoderConfig
from jaxft.recipes.minigpt import model as mg
from tests.recipes.minigpt.test_model import _params


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    from jaxft.data.corpus import demo_corpus
    from jaxft.tokenization.sentencepiece import train_sentencepiece

    out = tmp_path_factory.mktemp("spm")
    tok = train_sentencepiece(demo_corpus()[:1500], out, vocab_size=512, model_type="unigram")
    return out / "tokenizer.model", tok


def _cfg(vocab):
    return DecoderConfig.from_hf(mg.hf_config(vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4,
                                              num_kv_heads=2, context=64, shape="llama", bos_token_id=1,
                                              eos_token_id=2, pad_token_id=3))


def _logits(cfg, params, ids):
    return np.asarray(decoder.forward(cfg, params, jnp.asarray(ids))[0])


def _transformers_logits(path, cfg, ids):
    import torch
    import transformers
    # transformers' GGUF config reader does not look for attention biases; the config declares them.
    hf = {k: v for k, v in cfg.hf_config.items() if k != "model_type"}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, config=transformers.LlamaConfig(**hf), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


@pytest.mark.parametrize("tensor_type", ["f32", "f16", "q8_0"])
def test_gguf_round_trip(tmp_path, spm_tok, tensor_type):
    import gguf

    spm_path, tok = spm_tok
    cfg = _cfg(len(tok))
    params = _params(cfg)
    path = write_gguf(tmp_path / "m.gguf", cfg, params, tok, spm_model=spm_path, tensor_type=tensor_type)
    cfg2, params2 = jaxft.load_pretrained(path)
    assert (cfg2.attention_bias, cfg2.o_proj_bias, cfg2.tie_word_embeddings) == (True, True, True)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    ours = _logits(cfg2, params2, ids)
    # The expected weights: matrices rounded as the file stores them, vectors exact.
    def stored(path_, x):
        x = np.asarray(x, np.float32)
        name = jax.tree_util.keystr(path_)
        if x.ndim < 2 or "norm" in name or "bias" in name or tensor_type == "f32":
            return x
        embedding = "embed_tokens" in name  # stored [vocab, hidden]; kernels are [in, out] = GGUF rows transposed
        row = x.shape[-1] if embedding else x.shape[-2]
        if tensor_type == "f16" or row % 32:
            return x.astype(np.float16).astype(np.float32)
        qt = gguf.GGMLQuantizationType.Q8_0

        def q8(m):
            m = m if embedding else m.T
            m = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(m), qt), qt)
            return m if embedding else m.T

        return np.stack([q8(m) for m in x]) if x.ndim == 3 else q8(x)

    expected_params = jax.tree_util.tree_map_with_path(stored, params)
    np.testing.assert_allclose(ours, _logits(cfg, expected_params, ids), atol=2e-4)
    if tensor_type == "f32":
        np.testing.assert_allclose(ours, _logits(cfg, params, ids), atol=1e-5)
    np.testing.assert_allclose(_transformers_logits(path, cfg, ids), ours, atol=2e-4)


def test_gguf_tokenizer_reads_back(tmp_path):
    """A BPE SentencePiece model reads back as the same tokenizer (llama.cpp's "llama" vocabulary merges by
    score, which is BPE's rule; a unigram model is stored the same way but only approximately re-encoded)."""
    import transformers
    from jaxft.data.corpus import demo_corpus
    from jaxft.tokenization.sentencepiece import train_sentencepiece

    tok = train_sentencepiece(demo_corpus()[:1500], tmp_path / "tok", vocab_size=512, model_type="bpe")
    spm_path = tmp_path / "tok" / "tokenizer.model"
    cfg = _cfg(len(tok))
    path = write_gguf(tmp_path / "m.gguf", cfg, _params(cfg), tok, spm_model=spm_path, tensor_type="f32")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = "The module returns a list of strings."
    assert theirs.decode(theirs.encode(text, add_special_tokens=False)) == text
    assert theirs.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_reference_block_is_refused(tmp_path):
    cfg = DecoderConfig.from_hf(mg.hf_config(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, context=16))
    with pytest.raises(ValueError, match="Llama-shaped"):
        write_gguf(tmp_path / "m.gguf", cfg, _params(cfg))


@pytest.mark.slow
def test_export_gguf_cli(tmp_path, spm_tok):
    import subprocess
    import sys

    from jaxft.recipes.minigpt.export import save_model

    spm_path, tok = spm_tok
    cfg = _cfg(len(tok))
    params = _params(cfg)
    save_model(tmp_path / "export" / "model", cfg, params, tok, spm_path)
    run = subprocess.run([sys.executable, "-m", "jaxft.recipes.minigpt", "export-gguf", "--ckpt",
                          str(tmp_path / "export"), "--out", str(tmp_path / "m.gguf"), "--type", "f32"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    cfg2, params2 = jaxft.load_pretrained(tmp_path / "m.gguf")
    ids = np.arange(10)[None]
    np.testing.assert_allclose(_logits(cfg2, params2, ids), _logits(cfg, params, ids), atol=1e-5)
    reference = DecoderConfig.from_hf(mg.hf_config(vocab_size=len(tok), hidden_size=32, num_layers=1, num_heads=2,
                                                   context=16))
    save_model(tmp_path / "ref" / "model", reference, _params(reference), tok, spm_path)
    bad = subprocess.run([sys.executable, "-m", "jaxft.recipes.minigpt", "export-gguf", "--ckpt",
                          str(tmp_path / "ref"), "--out", str(tmp_path / "r.gguf")],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Llama-shaped" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
