"""GGUF import: real SmolLM2-135M weights against transformers, tiny files of every family and type."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import transformers

import jaxft
from jaxft import assets
from jaxft.checkpoint.gguf import GGUFSource, llama3_rope_from_factors
from jaxft.tokenization import load_tokenizer
from tests import tiny
from tests.tiny import assert_as_close_to_float64, float64_reference

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "In 1969, two astronauts walked on the Moon while a third orbited above.",
]


def _smollm2_path():
    return assets.smollm2_gguf_path()  # requirements-assets.txt is part of the test install


# -- writing small GGUF files the way llama.cpp's converter does ----------------------------------------

_ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "mistral": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2,
         "qwen3": gguf.MODEL_ARCH.QWEN3}
# Byte offsets of the float16 super-block scales in each K-quant block, so random blocks stay finite.
_K_SCALE_OFFSETS = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}


def _permute_for_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter order for Q/K rows: the two rotary halves interleaved per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_k_blocks(shape: tuple[int, int], qtype, rng) -> np.ndarray:
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(shape[0], shape[1] // block_elems, block_bytes), dtype=np.uint8)
    for offset in _K_SCALE_OFFSETS[qtype]:
        scale = rng.uniform(1e-4, 4e-4, size=raw.shape[:2]).astype(np.float16)
        raw[..., offset:offset + 2] = scale[..., None].view(np.uint8)
    return raw.reshape(shape[0], -1)


def write_gguf(path, config, state_dict, *, arch: str | None = None, types=None, rope_freqs=None,
               linear_rope_factor=None, seed=0):
    """Write ``state_dict`` (HF names, torch tensors) as a GGUF file; ``types`` maps an HF name to a type.

    Tensor names come from gguf's own name table, so this does not share jaxft's mapping.
    """
    model_type = config.model_type
    arch = arch or model_type
    rng = np.random.default_rng(seed)
    names = gguf.get_tensor_name_map(_ARCH.get(model_type, gguf.MODEL_ARCH.LLAMA), config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {model_type}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    if config.pad_token_id is not None:
        writer.add_pad_token_id(config.pad_token_id)
    if linear_rope_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(linear_rope_factor)
    for hf_name, value in state_dict.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = f"{names.get_name(base)}.{suffix}"
        w = value.detach().float().numpy()
        if model_type in ("llama", "mistral") and ".self_attn.q_proj." in hf_name:
            w = _permute_for_llama_cpp(w, config.num_attention_heads)
        if model_type in ("llama", "mistral") and ".self_attn.k_proj." in hf_name:
            w = _permute_for_llama_cpp(w, config.num_key_value_heads)
        qtype = (types or {}).get(hf_name, QT.F32)
        if qtype in _K_SCALE_OFFSETS:
            writer.add_tensor(gguf_name, _random_k_blocks(w.shape, qtype, rng), raw_dtype=qtype)
        elif qtype in (QT.F32, QT.F16):
            writer.add_tensor(gguf_name, w.astype(np.float32 if qtype == QT.F32 else np.float16))
        else:
            writer.add_tensor(gguf_name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _hf_logits(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    return logits.numpy() if logits.dtype == torch.float64 else logits.float().numpy()


def _tiny_batch(vocab=128, seed=0):
    return np.random.default_rng(seed).integers(3, vocab, size=(2, 20))


# -- SmolLM2-135M-Instruct, Q4_1 with a Q8_0 embedding ----------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(path, cfg, params, load seconds), loaded once per module."""
    path = _smollm2_path()
    start = time.perf_counter()
    cfg, params = jaxft.load_pretrained(path)
    return path, cfg, params, time.perf_counter() - start


@pytest.fixture(scope="module")
def smollm2_hf():
    """transformers' own GGUF loader on the same file: the reference."""
    import functools

    path = _smollm2_path()
    with pytest.MonkeyPatch.context() as mp:
        # transformers rebuilds gguf's (pure) tensor-name table once per submodule; memoizing it
        # only saves time.
        mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    path = _smollm2_path()
    return load_tokenizer(path)


def test_smollm2_config_matches_transformers(smollm2, smollm2_hf):
    _, cfg, _, seconds = smollm2
    ref = smollm2_hf.config
    assert (cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == ("llama", 49152, 576, 30)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (9, 3, 64)
    assert cfg.tie_word_embeddings and ref.tie_word_embeddings
    assert cfg.intermediate_size == ref.intermediate_size
    assert cfg.rms_norm_eps == pytest.approx(ref.rms_norm_eps, rel=1e-6)
    assert cfg.rope_theta == ref.rope_parameters["rope_theta"]
    assert cfg.max_position_embeddings == ref.max_position_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (ref.bos_token_id, (ref.eos_token_id,))
    assert cfg.num_params() == sum(p.numel() for p in smollm2_hf.parameters())
    print(f"SmolLM2-135M GGUF load: {seconds:.1f}s, {cfg.num_params() / 1e6:.1f}M params")


def test_smollm2_logits_match_transformers(smollm2, smollm2_hf, smollm2_tokenizer):
    """A right-padded batch of real sentences, row by row without padding, against a float64 run.

    On a sequence's first token SmolLM2's residual stream reaches ~2e4 in a few channels, so
    float32 rounding alone moves logits by up to ~1.5e-4 in either implementation: jaxft's
    float32 logits must be as close to float64 as transformers' float32 logits are.
    """
    _, cfg, params, _ = smollm2
    batch = smollm2_tokenizer(SENTENCES, padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask.min() == 0  # the batch really is padded
    ours = np.asarray(jaxft.logits(cfg, params, ids, mask))
    exact_model = float64_reference(smollm2_hf)
    keep = mask.astype(bool)
    rows = [(ours[row][keep[row]], _hf_logits(smollm2_hf, ids[row][keep[row]][None])[0],
             _hf_logits(exact_model, ids[row][keep[row]][None])[0]) for row in range(len(ids))]
    ours, theirs, exact = (np.concatenate(x) for x in zip(*rows))
    assert np.abs(ours - theirs).max() <= 5e-4
    mean_ours, mean_theirs = assert_as_close_to_float64(ours, theirs, exact)
    print(f"SmolLM2-135M mean over tokens of max |logits - float64|: jaxft {mean_ours:.2e}, "
          f"transformers {mean_theirs:.2e}; max jaxft {np.abs(ours - exact).max():.2e}, "
          f"transformers {np.abs(theirs - exact).max():.2e}")


def test_smollm2_greedy_chat_matches_transformers_generate(smollm2, smollm2_hf, smollm2_tokenizer):
    from jaxft.sampling import SamplingConfig, generate

    _, cfg, params, _ = smollm2
    tok = smollm2_tokenizer
    messages = [{"role": "user", "content": "Give me three tips for writing clear technical documentation."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="np")
    ids = prompt["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    new = 16
    with torch.no_grad():
        ref = smollm2_hf.generate(torch.tensor(ids), attention_mask=torch.tensor(prompt["attention_mask"]),
                                  max_new_tokens=new, do_sample=False)[0, ids.shape[1]:].tolist()
    out = generate(cfg, params, ids, SamplingConfig(max_new_tokens=new, temperature=0.0))
    ours = out.token_lists()[0]
    print("SmolLM2 greedy:", repr(tok.decode(ours)))
    assert len(ref) == new
    assert ours == ref


def test_smollm2_save_pretrained_loads_in_transformers(smollm2, smollm2_hf, smollm2_tokenizer, tmp_path):
    _, cfg, params, _ = smollm2
    out = jaxft.save_pretrained(tmp_path / "smollm2", cfg, params, tokenizer=smollm2_tokenizer)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = smollm2_tokenizer(SENTENCES[1], return_tensors="np")["input_ids"]
    ref = _hf_logits(smollm2_hf, ids)
    reloaded = _hf_logits(model, ids)
    assert np.abs(reloaded - ref).max() <= 1e-4
    tok = load_tokenizer(out)
    assert tok.chat_template == smollm2_tokenizer.chat_template
    assert tok(SENTENCES[1])["input_ids"] == ids[0].tolist()


# -- tiny files: every family, the llama.cpp layouts, rope scaling -----------------------------------------


def _llama3_divisors_from(model) -> np.ndarray:
    """What llama.cpp stores for Llama 3 rope scaling: default / scaled inverse frequencies."""
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    theta = model.config.rope_parameters["rope_theta"]
    plain = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return plain / model.model.rotary_emb.inv_freq.double().numpy()


def _mistral_without_window():
    config = transformers.MistralConfig(**dict(tiny.COMMON, sliding_window=None, tie_word_embeddings=False))
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("family", ["llama", "llama_tied", "qwen2", "qwen3", "mistral"])
def test_tiny_gguf_gives_original_tensors_and_config(family, tmp_path):
    """An F32 GGUF written from a transformers model yields exactly its tensors (HF names and
    layouts) and an equivalent config, so the decoder parity tests carry over."""
    from jaxft.models.rope import inverse_frequencies

    model = _mistral_without_window() if family == "mistral" else tiny.hf_model(family)
    llama3 = model.config.rope_parameters.get("rope_type") == "llama3"
    path = write_gguf(tmp_path / f"{family}.gguf", model.config, model.state_dict(),
                      rope_freqs=_llama3_divisors_from(model) if llama3 else None)
    source = GGUFSource(path)
    expected = {k: v for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}
    assert set(source.names()) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(source.get(name), value.numpy(), err_msg=name)
    source.close()

    ours = jaxft.DecoderConfig.from_hf(source.hf_config)
    ref = jaxft.DecoderConfig.from_hf(model.config.to_dict())
    np.testing.assert_allclose(inverse_frequencies(ours), inverse_frequencies(ref), rtol=1e-6)
    if llama3:  # the thresholds come back as an equivalent pair, not necessarily the same numbers
        assert ours.rope_type == "llama3"
        ours = ours.replace(rope_params=ref.rope_params)
    assert ours == ref


def test_tiny_llama3_gguf_logits_match_original_model(tmp_path):
    model = tiny.hf_model("llama")
    path = write_gguf(tmp_path / "llama.gguf", model.config, model.state_dict(),
                      rope_freqs=_llama3_divisors_from(model))
    cfg, params = jaxft.load_pretrained(path)
    ids = _tiny_batch()
    ours = np.asarray(jaxft.logits(cfg, params, ids))
    assert np.abs(ours - _hf_logits(model, ids)).max() <= 1e-4


def test_tiny_gguf_writer_agrees_with_transformers_loader(tmp_path):
    """transformers' own GGUF loader reads the test files as the original model: the
    writer's Q/K permutation is llama.cpp's, so jaxft's inverse is checked against it."""
    model = tiny.hf_model("llama_tied")
    path = write_gguf(tmp_path / "llama.gguf", model.config, model.state_dict())
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    ids = _tiny_batch()
    assert np.abs(_hf_logits(loaded, ids) - _hf_logits(model, ids)).max() <= 1e-5
    source = GGUFSource(path)
    ref = model.state_dict()
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"):
        np.testing.assert_array_equal(source.get(name), ref[name].numpy())
    source.close()


def test_quantized_types_match_transformers_loader(tmp_path):
    """Block-quantized tensors (random K-quant blocks, quantized Q*_0/Q*_1/BF16) dequantize and
    reshape to what transformers' GGUF loader builds from the same file."""
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    layer0 = {"q_proj": QT.Q4_K, "k_proj": QT.Q5_K, "v_proj": QT.Q6_K, "o_proj": QT.Q8_0}
    layer0_mlp = {"gate_proj": QT.Q4_0, "up_proj": QT.Q4_1, "down_proj": QT.Q2_K}
    layer1 = {"q_proj": QT.Q5_0, "k_proj": QT.Q5_1, "v_proj": QT.F16, "o_proj": QT.Q3_K}
    types = {"model.embed_tokens.weight": QT.Q8_0, "lm_head.weight": QT.BF16,
             "model.layers.1.mlp.gate_proj.weight": QT.Q6_K}
    types.update({f"model.layers.0.self_attn.{k}.weight": v for k, v in layer0.items()})
    types.update({f"model.layers.0.mlp.{k}.weight": v for k, v in layer0_mlp.items()})
    types.update({f"model.layers.1.self_attn.{k}.weight": v for k, v in layer1.items()})
    path = write_gguf(tmp_path / "quant.gguf", config, model.state_dict(), types=types)
    written = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert {QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q2_K, QT.Q3_K, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.BF16,
            QT.F16, QT.F32} <= set(written.values())

    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                                  dtype=torch.float32).eval()
    ref_weights = reference.state_dict()
    source = GGUFSource(path)
    for name in types:
        np.testing.assert_allclose(source.get(name), ref_weights[name].numpy(), rtol=0, atol=1e-6, err_msg=name)
    source.close()
    # Quantization keeps the weights close to the originals where they were quantized from them.
    q8 = GGUFSource(path).get("model.embed_tokens.weight")
    original = model.state_dict()["model.embed_tokens.weight"].numpy()
    assert np.abs(q8 - original).max() <= np.abs(original).max() / 100

    cfg, params = jaxft.load_pretrained(path)
    ids = _tiny_batch(vocab=256)
    ours = np.asarray(jaxft.logits(cfg, params, ids))
    ref = _hf_logits(reference, ids)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


# -- rope scaling ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor,original", [(8.0, 8192), (32.0, 8192)])
def test_llama3_rope_recovered_from_divisors(factor, original):
    """Llama 3.1 / 3.2 settings come back exactly from llama.cpp's divisors, computed with transformers."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=original))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (np.arange(0, 64, 2, dtype=np.float64) / 64)
    divisors = (plain / scaled.double().numpy()).astype(np.float32).astype(np.float64)
    rope = llama3_rope_from_factors(divisors, 500000.0, 64)
    assert rope == {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": original}


def test_rope_divisors_of_another_shape_are_refused():
    plain = np.ones(32)
    plain[10:] = np.linspace(1.0, 3.0, 22) ** 2  # a quadratic ramp, not llama3's
    with pytest.raises(jaxft.CheckpointError, match="rope_freqs does not follow llama3"):
        llama3_rope_from_factors(plain, 500000.0, 64)


def test_linear_rope_scaling_metadata(tmp_path):
    config = transformers.LlamaConfig(**dict(tiny.COMMON, rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=4.0)))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    path = write_gguf(tmp_path / "linear.gguf", config, model.state_dict(), linear_rope_factor=4.0)
    source = GGUFSource(path)
    assert source.hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    ours = jaxft.DecoderConfig.from_hf(source.hf_config)
    assert ours == jaxft.DecoderConfig.from_hf(config.to_dict())


# -- errors ------------------------------------------------------------------------------------------------------


def _minimal_gguf(path, arch="llama", qtype=QT.F32):
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    weight = np.zeros((64, 64), np.float32)
    if qtype == QT.F32:
        writer.add_tensor("blk.0.attn_q.weight", weight)
    else:  # raw bytes of the right size; the type is what is under test
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64 // block_elems * block_bytes), np.uint8),
                          raw_dtype=qtype)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_is_named(tmp_path):
    path = _minimal_gguf(tmp_path / "phi.gguf", arch="phi3")
    with pytest.raises(jaxft.CheckpointError, match=r"phi\.gguf: GGUF architecture 'phi3' is not supported"):
        jaxft.load_pretrained(path)


def test_unsupported_tensor_type_is_named(tmp_path):
    path = _minimal_gguf(tmp_path / "q81.gguf", qtype=QT.Q8_1)
    with pytest.raises(jaxft.CheckpointError, match=r"tensor 'blk\.0\.attn_q\.weight' has GGUF type Q8_1"):
        GGUFSource(path)


def test_not_a_gguf_file_is_named(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"definitely not a gguf file")
    with pytest.raises(jaxft.CheckpointError, match=r"broken\.gguf: not a readable GGUF file"):
        jaxft.load_pretrained(path)


def test_missing_metadata_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "nometa.gguf"), "qwen2")
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(jaxft.CheckpointError, match=r"'qwen2\.embedding_length' is missing"):
        GGUFSource(tmp_path / "nometa.gguf")


def test_head_dim_and_rotary_mismatch_is_refused(tmp_path):
    path = tmp_path / "partial.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_rope_dimension_count(16)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(jaxft.CheckpointError, match="partial rotary"):
        GGUFSource(path)


def test_inverse_permutation_round_trips():
    from jaxft.checkpoint.gguf import unpermute_qk

    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)
    assert np.array_equal(unpermute_qk(_permute_for_llama_cpp(w, 6), 6), w)
    assert not np.array_equal(_permute_for_llama_cpp(w, 6), w)
