import numpy as np
import pytest
import torch
import transformers

import jaxft
from tests.tiny import CONFIGS, assert_as_close_to_float64, float64_reference

FAMILIES = list(CONFIGS)


def _batch(vocab=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, 20))
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padded
    mask[2, 14:] = 0  # right padded
    ids = np.where(mask == 1, ids, 0)
    return ids, mask


def _torch_logits(model, ids, mask):
    out = []
    with torch.no_grad():
        for row, m in zip(ids, mask):  # one row at a time, unpadded: the semantics we promise
            keep = m.astype(bool)
            full = np.zeros((len(row), model.config.vocab_size), np.float64)
            full[keep] = model(torch.tensor(row[keep][None])).logits[0].double().numpy()
            out.append(full)
    return np.stack(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_dir, family):
    """jaxft's float32 logits are as close to a float64 run as transformers' float32 logits are."""
    directory = tiny_dir(family)
    ids, mask = _batch()
    cfg, params = jaxft.load_pretrained(directory)
    ours = np.asarray(jaxft.logits(cfg, params, ids, mask))
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    theirs = _torch_logits(model, ids, mask)
    exact = _torch_logits(float64_reference(model), ids, mask)
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - theirs[keep]).max() <= 1e-4  # a coarse check first, for a readable failure
    assert_as_close_to_float64(ours[keep], theirs[keep], exact[keep])


def test_float64_logits_equal_transformers_float64(tiny_dir):
    """Under ``jax_enable_x64`` the decoder computes in float64 end to end and equals transformers in
    float64 to rounding: every float32 difference above is rounding, not a different computation.
    A separate process, as x64 is process-wide."""
    import json
    import subprocess
    import sys

    ids, mask = _batch()
    dirs = {family: str(tiny_dir(family)) for family in FAMILIES}
    script = (
        "import json, sys, jax, numpy as np\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "import jax.numpy as jnp, jaxft\n"
        "dirs, ids, mask = json.loads(sys.stdin.read())\n"
        "out = {}\n"
        "for family, d in dirs.items():\n"
        "    cfg, params = jaxft.load_pretrained(d, dtype=jnp.float64)\n"
        "    out[family] = np.asarray(jaxft.logits(cfg, params, np.array(ids), np.array(mask))).tolist()\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], input=json.dumps([dirs, ids.tolist(), mask.tolist()]),
                         capture_output=True, text=True, timeout=600, check=True)
    ours = json.loads(run.stdout.strip().splitlines()[-1])
    keep = mask.astype(bool)
    for family, directory in dirs.items():
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        exact = _torch_logits(float64_reference(model), ids, mask)
        # Only the rotary inverse frequencies differ: float32 in transformers, float64 here.
        assert np.abs(np.asarray(ours[family])[keep] - exact[keep]).max() <= 1e-7, family  # float32: ~1e-5


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
