"""generate() against transformers' generate and logits processors, on tiny random models."""

import importlib

import numpy as np
import pytest
import torch
import transformers
from transformers.generation import logits_process as hf_lp

import jax
import jax.numpy as jnp

import jaxft
from jaxft.sampling import SamplingConfig, decode_and_trim, generate, processors, stop_sequences_from_strings
from jaxft.sampling.config import FINISH_REASONS

# The package re-exports the function under the module's name, so fetch the module itself.
generate_module = importlib.import_module("jaxft.sampling.generate")

NEW = 12
# Rows of different lengths; 9 + 12 tokens is well past Mistral's sliding window of 8.
PROMPTS = [[5, 17, 33, 9, 41], [7, 88, 21, 64, 3, 99, 12, 50, 71]]
GREEDY = SamplingConfig(max_new_tokens=NEW, output_logits=True)


def _left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), pad, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


@pytest.fixture(scope="module")
def models(tiny_dir):
    loaded = {}

    def get(family):
        if family not in loaded:
            directory = tiny_dir(family)
            cfg, params = jaxft.load_pretrained(directory)
            hf = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
            loaded[family] = cfg, params, hf
        return loaded[family]

    return get


def _hf_generate(hf, prompt, pad=0, **kw):
    """transformers' new tokens for one unpadded prompt, padded to NEW with the pad id."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                          pad_token_id=pad, **kw)
    new = out[0, len(prompt):].tolist()
    return new + [pad] * (NEW - len(new))


def _greedy_tokens(models, family="llama", row=0):
    cfg, params, _ = models(family)
    ids, mask = _left_padded(PROMPTS)
    return np.asarray(generate(cfg, params, ids, GREEDY, attention_mask=mask).tokens)[row]


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_greedy_left_padded_batch_matches_transformers_per_row(models, family):
    cfg, params, hf = models(family)
    ids, mask = _left_padded(PROMPTS)
    out = generate(cfg, params, ids, GREEDY, attention_mask=mask)
    for row, prompt in enumerate(PROMPTS):
        expected = _hf_generate(hf, prompt)
        assert np.asarray(out.tokens[row]).tolist() == expected
        assert out.lengths[row] == (expected.index(2) + 1 if 2 in expected else NEW)


def test_cache_decode_logits_equal_full_forward(models):
    """Every decode step's logits equal a cache-free forward over prompt + generated tokens."""
    cfg, params, _ = models("mistral")  # sliding window 8 < 9 + 12
    ids, mask = _left_padded(PROMPTS)
    out = generate(cfg, params, ids, GREEDY, attention_mask=mask)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths.min() >= 8, "too short to cover the sliding window"
    new_mask = np.arange(NEW)[None, :] < lengths[:, None]
    full = np.asarray(jaxft.logits(cfg, params, np.concatenate([ids, tokens], 1),
                                   np.concatenate([mask, new_mask], 1)))
    p = ids.shape[1]
    for row in range(len(PROMPTS)):
        n = lengths[row]
        np.testing.assert_allclose(np.asarray(out.logits[row, :n]), full[row, p - 1:p - 1 + n], atol=1e-4, rtol=0)


def test_top_k_one_sampling_equals_greedy(models):
    cfg, params, _ = models("llama")
    ids, mask = _left_padded(PROMPTS)
    sampled = generate(cfg, params, ids, GREEDY.replace(temperature=0.7, top_k=1), attention_mask=mask, seed=3)
    np.testing.assert_array_equal(np.asarray(sampled.tokens), np.stack([_greedy_tokens(models, row=r)
                                                                       for r in range(2)]))


def test_penalties_match_transformers_generate(models):
    cfg, params, hf = models("llama")
    prompt = [9, 9, 30, 9, 30, 4]
    sampling = SamplingConfig(max_new_tokens=NEW, repetition_penalty=1.8, no_repeat_ngram_size=2)
    ours = generate(cfg, params, np.array([prompt]), sampling)
    expected = _hf_generate(hf, prompt, repetition_penalty=1.8, no_repeat_ngram_size=2)
    assert np.asarray(ours.tokens[0]).tolist() == expected
    plain = _hf_generate(hf, prompt)
    assert expected != plain, "penalties had no effect on this prompt; the test would prove nothing"


@pytest.mark.filterwarnings("ignore:Passing `repetition_penalty` with `inputs_embeds`")
def test_inputs_embeds_prefill_penalises_generated_tokens_only(models):
    cfg, params, hf = models("llama")
    prompt = PROMPTS[1]
    embeds = params["model"]["embed_tokens"]["weight"][np.array([prompt])]
    sampling = SamplingConfig(max_new_tokens=NEW, repetition_penalty=1.8)
    ours = generate(cfg, params, None, sampling, inputs_embeds=embeds)
    with torch.no_grad():
        ref = hf.generate(inputs_embeds=torch.tensor(np.asarray(embeds)), do_sample=False, max_new_tokens=NEW,
                          repetition_penalty=1.8, pad_token_id=0)[0].tolist()
    assert np.asarray(ours.tokens[0]).tolist() == ref + [0] * (NEW - len(ref))


def _first_new_index(tokens, start=2, width=1):
    """First k >= start such that tokens[k:k+width] does not occur earlier in tokens."""
    for k in range(start, len(tokens) - width):
        if all(tokens[j:j + width] != tokens[k:k + width] for j in range(k)):
            return k
    pytest.fail("greedy output of the tiny model has no fresh token to stop on: pick another prompt")


def test_stops_on_eos_like_transformers(models):
    cfg, params, hf = models("llama")
    greedy = _greedy_tokens(models).tolist()
    k = _first_new_index(greedy)
    eos = greedy[k]
    out = generate(cfg, params, np.array([PROMPTS[0]]), SamplingConfig(max_new_tokens=NEW, eos_token_ids=(eos,)))
    assert np.asarray(out.tokens[0]).tolist() == greedy[:k + 1] + [0] * (NEW - k - 1)
    assert np.asarray(out.tokens[0]).tolist() == _hf_generate(hf, PROMPTS[0], eos_token_id=eos)
    assert out.lengths.tolist() == [k + 1] and out.finish_reasons() == ["eos"]


def test_min_new_tokens_suppresses_eos_like_transformers(models):
    cfg, params, hf = models("llama")
    greedy = _greedy_tokens(models).tolist()
    k = _first_new_index(greedy)
    eos, minimum = greedy[k], k + 2
    sampling = SamplingConfig(max_new_tokens=NEW, min_new_tokens=minimum, eos_token_ids=(eos,))
    out = generate(cfg, params, np.array([PROMPTS[0]]), sampling)
    tokens = np.asarray(out.tokens[0]).tolist()
    assert eos not in tokens[:minimum]
    assert tokens[:k] == greedy[:k] and tokens[k] != eos
    assert tokens == _hf_generate(hf, PROMPTS[0], eos_token_id=eos, min_new_tokens=minimum)


def test_stop_sequence_ends_only_the_matching_row(models):
    cfg, params, _ = models("llama")
    greedy = [_greedy_tokens(models, row=r).tolist() for r in range(2)]
    k = _first_new_index(greedy[0], width=2)
    stop = tuple(greedy[0][k:k + 2])
    assert not any(tuple(greedy[1][j:j + 2]) == stop for j in range(NEW - 1)), "row 1 would stop too"
    ids, mask = _left_padded(PROMPTS)
    sampling = SamplingConfig(max_new_tokens=NEW, eos_token_ids=(), stop_sequences=[list(stop), [127, 126, 125]])
    out = generate(cfg, params, ids, sampling, attention_mask=mask)
    assert np.asarray(out.tokens[0]).tolist() == greedy[0][:k + 2] + [0] * (NEW - k - 2)
    assert np.asarray(out.tokens[1]).tolist() == greedy[1]
    assert out.lengths.tolist() == [k + 2, NEW]
    assert out.finish_reasons() == ["stop_sequence", "length"]


def test_seed_reproducibility_on_near_flat_distribution(models):
    cfg, params, _ = models("llama")
    ids, mask = _left_padded(PROMPTS)
    hot = SamplingConfig(max_new_tokens=NEW, temperature=100.0, eos_token_ids=())
    a, b, c = (np.asarray(generate(cfg, params, ids, hot, attention_mask=mask, seed=s).tokens) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.8  # near-uniform over 128 ids: collisions are rare
    assert len(np.unique(a)) > NEW  # and the samples really spread out


def test_no_retrace_for_new_prompts_seeds_and_params(models, monkeypatch):
    cfg, params, _ = models("llama")
    traces = []
    real_forward = generate_module.forward

    def counting_forward(*args, **kwargs):
        traces.append(1)
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(generate_module, "forward", counting_forward)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0.9, top_p=0.9)  # used by no other test
    ids, mask = _left_padded(PROMPTS)
    generate(cfg, params, ids, sampling, attention_mask=mask, seed=0).tokens.block_until_ready()
    first = len(traces)
    assert first == 2  # the prefill and the decode-loop body, traced once each
    other_ids, other_mask = _left_padded([[3, 4], PROMPTS[0] + [6, 7, 8, 9]])
    scaled = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) * 1.01), params)
    out = generate(cfg, scaled, other_ids, sampling, attention_mask=other_mask, seed=7)
    out.tokens.block_until_ready()
    assert len(traces) == first


# --- logits processors, directly against transformers' -----------------------------------------
# Jitted once each: op-by-op dispatch would compile every primitive separately, which is slower.
_repetition_penalty = jax.jit(processors.repetition_penalty)
_no_repeat_ngram = jax.jit(processors.no_repeat_ngram, static_argnums=4)
_top_k = jax.jit(processors.top_k, static_argnums=1)
_top_p = jax.jit(processors.top_p)


def _scores(seed, shape=(3, 40)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


@pytest.mark.parametrize("penalty", [1.3, 0.6])
def test_repetition_penalty_matches_transformers(penalty):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 40, size=(3, 10))
    scores = _scores(1)
    ref = hf_lp.RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(ids), torch.tensor(scores)).numpy()
    ours = _repetition_penalty(jnp.asarray(scores), jnp.asarray(ids), jnp.ones(ids.shape, bool), penalty)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6)
    # Padding slots are not tokens: a padded row equals the unpadded row.
    padded = np.concatenate([np.full((3, 4), 39), ids], 1)
    valid = np.concatenate([np.zeros((3, 4), bool), np.ones(ids.shape, bool)], 1)
    ours_padded = _repetition_penalty(jnp.asarray(scores), jnp.asarray(padded), jnp.asarray(valid), penalty)
    np.testing.assert_allclose(np.asarray(ours_padded), ref, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_matches_transformers(n):
    ids = np.random.default_rng(n).integers(0, 4, size=(3, 18))  # small alphabet: many repeats
    ids[0, 18 - (n - 1):] = ids[0, 3:3 + n - 1]  # row 0's prefix surely occurred before
    scores = _scores(2, (3, 16))
    ref = hf_lp.NoRepeatNGramLogitsProcessor(n)(torch.tensor(ids), torch.tensor(scores)).numpy()
    # Our history is longer than what has been filled; the unfilled tail must be ignored.
    history = np.concatenate([ids, np.zeros((3, 5), np.int64)], 1)
    valid = np.arange(history.shape[1])[None, :] < ids.shape[1]
    ours = _no_repeat_ngram(jnp.asarray(scores), jnp.asarray(history),
                            jnp.asarray(np.broadcast_to(valid, history.shape)), ids.shape[1], n)
    assert np.isinf(ref[0]).any()
    np.testing.assert_array_equal(np.asarray(ours), ref)


def test_top_k_and_top_p_match_transformers():
    scores = _scores(3)
    for k in (1, 5, 40):
        ref = hf_lp.TopKLogitsWarper(k)(None, torch.tensor(scores)).numpy()
        np.testing.assert_array_equal(np.asarray(_top_k(jnp.asarray(scores), k)), ref)
    for p in (0.05, 0.5, 0.9, 0.999):
        ref = hf_lp.TopPLogitsWarper(p)(None, torch.tensor(scores)).numpy()
        np.testing.assert_array_equal(np.asarray(_top_p(jnp.asarray(scores), p)), ref)


def test_sampled_frequencies_follow_filtered_softmax():
    logits = np.array([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -5.0]], np.float32)
    sampling = SamplingConfig(temperature=0.8, top_k=5, top_p=0.9)
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = jax.jit(jax.vmap(lambda k: processors.select_token(sampling, jnp.asarray(logits), k)))(keys)
    freq = np.bincount(np.asarray(draws).ravel(), minlength=8) / draws.size
    # Analytic reference: softmax(x / T), keep the top 5, then the nucleus of mass 0.9.
    probs = np.exp(logits[0] / 0.8)
    probs[5:] = 0
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = order[: np.searchsorted(np.cumsum(probs[order]), 0.9) + 1]
    expected = np.zeros(8)
    expected[keep] = probs[keep] / probs[keep].sum()
    assert np.abs(freq - expected).max() < 0.015
    assert freq[expected == 0].sum() == 0


# --- inputs, config and text helpers ---------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(models):
    cfg, params, _ = models("llama")
    ids, mask = _left_padded(PROMPTS)
    with pytest.raises(ValueError, match="left-padded"):
        generate(cfg, params, ids, GREEDY, attention_mask=mask[:, ::-1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(cfg, params, ids, GREEDY.replace(eos_token_ids=(cfg.vocab_size,)), attention_mask=mask)
    with pytest.raises(ValueError, match="prompt_ids must lie"):
        generate(cfg, params, ids + cfg.vocab_size, GREEDY)
    with pytest.raises(ValueError, match="exactly one"):
        generate(cfg, params, None, GREEDY)
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be a number"):
        SamplingConfig(temperature=None)
    assert SamplingConfig(stop_sequences=[[1, np.int64(2)]]).stop_sequences == ((1, 2),)
    assert FINISH_REASONS == ("length", "eos", "stop_sequence")


def _word_tokenizer():
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    words = ["<pad>", "<unk>", "</s>", "hello", "world", "the", "end", ".", "again"]
    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def test_stop_strings_to_sequences_and_trimmed_decoding():
    tokenizer = _word_tokenizer()
    assert stop_sequences_from_strings(tokenizer, ["the end", "."]) == ((5, 6), (7,))
    with pytest.raises(ValueError, match="non-empty"):
        stop_sequences_from_strings(tokenizer, [""])
    out = generate_module.GenerationOutput(tokens=jnp.array([[3, 4, 5, 6, 0], [3, 8, 7, 4, 2]]),
                                           lengths=jnp.array([4, 5]), finish_reason=jnp.array([2, 1]))
    assert decode_and_trim(tokenizer, out, ["the end"]) == ["hello world ", "hello again . world"]
    assert decode_and_trim(tokenizer, out, [".", "end"]) == ["hello world the ", "hello again "]


def test_lora_is_applied_inside_generate(models):
    import jaxft.lora as lora_module

    cfg, params, _ = models("llama")
    lora = lora_module.init(jax.random.key(0), cfg, params, rank=4, alpha=8.0)
    # Fresh adapters are a no-op (b = 0); give b values so they change the output.
    rng = np.random.default_rng(0)
    for _, ab in lora.items():
        ab["b"] = jnp.asarray(0.5 * rng.normal(size=ab["b"].shape), ab["b"].dtype)
    ids, mask = _left_padded(PROMPTS)
    adapted = generate(cfg, params, ids, GREEDY, attention_mask=mask, lora=lora)
    merged_params = jax.jit(lora_module.merge, static_argnums=0)(cfg, params, lora)
    merged = generate(cfg, merged_params, ids, GREEDY, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(adapted.tokens), np.asarray(merged.tokens))
    np.testing.assert_allclose(np.asarray(adapted.logits), np.asarray(merged.logits), atol=1e-4, rtol=0)
    base = np.stack([_greedy_tokens(models, row=r) for r in range(2)])
    assert (np.asarray(adapted.tokens) != base).any(), "the adapters did not change the output"


def test_parameters_split_once_give_the_same_tokens(models):
    """Parameters already in the decode layout (``unstack_layers``) generate the same tokens and logits."""
    from jaxft.models.decoder import unstack_layers

    cfg, params, _ = models("llama")
    ids, mask = _left_padded(PROMPTS)
    split = unstack_layers(params)
    assert unstack_layers(split) is split
    want = generate(cfg, params, ids, GREEDY, attention_mask=mask)
    got = generate(cfg, split, ids, GREEDY, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(want.logits), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs the stacked parameters"):
        generate(cfg, split, ids, GREEDY, attention_mask=mask, lora=object())
