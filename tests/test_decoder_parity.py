import numpy as np
import pytest
import torch
import transformers

import jaxft
from tests.tiny import CONFIGS

FAMILIES = list(CONFIGS)


def _batch(vocab=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, 20))
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padded
    mask[2, 14:] = 0  # right padded
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def _torch_logits(directory, ids, mask):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for row, m in zip(ids, mask):  # one row at a time, unpadded: the semantics we promise
            keep = m.astype(bool)
            full = np.zeros((len(row), model.config.vocab_size), np.float32)
            full[keep] = model(torch.tensor(row[keep][None])).logits[0].numpy()
            out.append(full)
    return np.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_dir, family):
    directory = tiny_dir(family)
    ids, mask = _batch()
    cfg, params = jaxft.load_pretrained(directory)
    ours = np.asarray(jaxft.logits(cfg, params, ids, mask))
    ref = _torch_logits(directory, ids, mask)
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref[keep]).max() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_padded_batch_matches_transformers_batch(tiny_dir, family):
    """transformers run on the same padded batch (its own masking and position ids)."""
    directory = tiny_dir(family)
    ids, mask = _batch(seed=1)
    ids, mask = ids[:2], mask[:2]  # left padding only, as generate() uses
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    cfg, params = jaxft.load_pretrained(directory)
    ours = np.asarray(jaxft.logits(cfg, params, ids, mask))
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - ref[keep]).max() <= 1e-4


def test_packed_row_equals_its_sequences_alone(tiny_dir):
    from jaxft.models.decoder import forward

    cfg, params = jaxft.load_pretrained(tiny_dir("mistral"))  # sliding window too
    a, b = np.arange(3, 15), np.arange(40, 50)
    packed = np.concatenate([a, b])[None]
    segments = np.array([[1] * len(a) + [2] * len(b)])
    positions = np.concatenate([np.arange(len(a)), np.arange(len(b))])[None]
    out, _ = forward(cfg, params, packed, position_ids=positions, segment_ids=segments)
    alone_a = np.asarray(jaxft.logits(cfg, params, a[None]))[0]
    alone_b = np.asarray(jaxft.logits(cfg, params, b[None]))[0]
    np.testing.assert_allclose(np.asarray(out)[0], np.concatenate([alone_a, alone_b]), atol=1e-5)
