"""The embedllm task end to end on the smoke preset: loss on the last turn only, eval metrics, export/reload."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.embedllm import get_config
from jaxft.recipes.embedllm import build, load_export
from jaxft.recipes.embedllm.core import logits_jit, token_stats


def demo_words(tokenizer):
    from jaxft.recipes.embedllm.demo import fact_words

    return fact_words(tokenizer, int(get_config("smoke").embedllm.demo.num_words))

pytestmark = pytest.mark.slow  # builds and compiles the task (~1-2 min on this CPU)


@pytest.fixture(scope="module")
def task_and_batch():
    config = get_config("smoke")
    task = build(config, None)
    batch = {k: jnp.asarray(v) for k, v in next(task.train_batches).items()}
    return config, task, batch




def test_loss_is_cross_entropy_of_last_turn_tokens_only(task_and_batch, tmp_path):
    _, task, batch = task_and_batch
    task.export_fn(str(tmp_path), task.trainable, task.frozen)
    chat = load_export(str(tmp_path))
    logits = np.asarray(logits_jit(chat.model, chat.trainable, chat.frozen, batch["input_ids"],
                                   batch["attention_mask"], batch["history_ids"], batch["history_mask"]))
    ids, loss_mask = np.asarray(batch["input_ids"]), np.asarray(batch["loss_mask"])
    # slot 0 is the prefix slot; targets are the last-turn tokens after it, nothing else
    assert (loss_mask[:, 0] == 0).all() and loss_mask.sum() == (np.asarray(batch["attention_mask"])[:, 1:]).sum()
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    expected = (nll * loss_mask[:, 1:]).sum()
    loss_sum, weight_sum, _ = task.loss_fn(task.trainable, task.frozen, batch, None)
    assert float(weight_sum) == loss_mask.sum()
    assert abs(float(loss_sum) - expected) <= 1e-3 * max(1.0, abs(expected))
    # the history reaches the loss only through the prefix: zeroing it changes the loss
    zeroed = token_stats(chat.model, chat.trainable, chat.frozen, batch, zero_prefix=True)
    assert abs(float(zeroed.loss_sum) - float(loss_sum)) > 1e-4


def _nll_and_hits(logits, ids, loss_mask) -> tuple[float, float]:
    """Summed next-token NLL and argmax hits over ``loss_mask``, in float64 numpy from full logits."""
    logits = np.asarray(logits, np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    targets, mask = np.asarray(ids)[:, 1:], np.asarray(loss_mask)[:, 1:]
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return float((nll * mask).sum()), float(((logits.argmax(-1) == targets) * mask).sum())


def test_eval_reports_loss_with_and_without_the_prefix(task_and_batch, tmp_path):
    """Each eval figure against the full logits of its own variant, scored here: the real prefix, a zero
    vector in the prefix slot, and the empty history."""
    from jaxft.models.decoder import embed, forward

    _, task, batch = task_and_batch
    sums = {k: float(v) for k, v in task.eval_fn(task.trainable, task.frozen, batch).items()}
    task.export_fn(str(tmp_path), task.trainable, task.frozen)
    chat = load_export(str(tmp_path)).model
    ids, mask = batch["input_ids"], batch["loss_mask"]
    real = logits_jit(chat, task.trainable, task.frozen, ids, batch["attention_mask"], batch["history_ids"],
                      batch["history_mask"])
    empty = logits_jit(chat, task.trainable, task.frozen, ids, batch["attention_mask"], batch["history_ids"],
                       jnp.zeros_like(batch["history_mask"]))
    params = chat.llm_params(task.trainable, task.frozen)
    zero_slot = embed(chat.llm, params, ids, chat.dtype).at[:, 0].set(0)
    zeroed, _ = forward(chat.llm, params, attention_mask=batch["attention_mask"], inputs_embeds=zero_slot,
                        dtype=chat.dtype)
    expected = {}
    for name, logits in (("", real), ("zero_prefix_", zeroed), ("no_history_", empty)):
        expected[f"{name}loss"], expected[f"{name}accuracy"] = _nll_and_hits(logits, ids, mask)
    count = float(np.asarray(mask)[:, 1:].sum())
    for key, value in expected.items():
        assert sums[f"{key}_count"] == count, key
        assert abs(sums[key] - value) <= 1e-3 * max(1.0, abs(value)), (key, sums[key], value)
    gain = expected["zero_prefix_loss"] - expected["loss"]
    assert abs(sums["prefix_gain"] - gain) <= 2e-3 * max(1.0, abs(expected["loss"])) and abs(gain) > 1e-4


def test_recall_is_the_greedy_answer_word_of_each_conversation(task_and_batch, tmp_path):
    """``recall`` counts the rows whose recalled word is the argmax of the full logits at the slot before it."""
    _, task, batch = task_and_batch
    task.export_fn(str(tmp_path), task.trainable, task.frozen)
    chat = load_export(str(tmp_path))
    pos, ids = np.asarray(batch["answer_pos"])[:, 0], np.asarray(batch["input_ids"])
    assert (pos > 0).all()  # every demo conversation has its word; it is the word's token in the answer
    words = {chat.tokenizer.decode(ids[r, p:p + 1]).strip() for r, p in enumerate(pos)}
    assert words <= set(demo_words(chat.tokenizer)) and len(words) > 1
    sums = task.eval_fn(task.trainable, task.frozen, batch)
    for name, mask in (("", batch["history_mask"]), ("no_history_", jnp.zeros_like(batch["history_mask"]))):
        logits = np.asarray(logits_jit(chat.model, chat.trainable, chat.frozen, batch["input_ids"],
                                       batch["attention_mask"], batch["history_ids"], mask))
        right = sum(int(np.argmax(logits[r, p - 1]) == ids[r, p]) for r, p in enumerate(pos))
        assert float(sums[f"{name}recall"]) == right and float(sums[f"{name}recall_count"]) == len(pos)


def test_export_reload_gives_identical_logits(task_and_batch, tmp_path):
    _, task, batch = task_and_batch
    # perturb every trainable leaf so a group that is not written or not read back shows up
    rng = np.random.default_rng(0)
    trainable = jax.tree.map(lambda p: p + 0.05 * jnp.asarray(rng.normal(size=p.shape), p.dtype), task.trainable)
    task.export_fn(str(tmp_path / "a"), trainable, task.frozen)
    chat = load_export(str(tmp_path / "a"))
    assert set(json.loads((tmp_path / "a" / "embedllm.json").read_text())) >= {"perceiver", "condenser", "lora"}
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").exists()
    ours = chat.logits({k: np.asarray(v) for k, v in batch.items()})
    ref = np.asarray(logits_jit(chat.model, trainable, task.frozen, batch["input_ids"], batch["attention_mask"],
                                batch["history_ids"], batch["history_mask"]))
    np.testing.assert_array_equal(ours, ref)
    replies = chat.reply(["Remember the word time.<|turn|>What was the word?<|turn|>The word"], max_new_tokens=3)
    assert len(replies) == 1 and isinstance(replies[0], str)

    (tmp_path / "a" / "embedllm.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="embedllm.safetensors: not a readable safetensors file"):
        load_export(str(tmp_path / "a"))
    (tmp_path / "a" / "embedllm.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="embedllm.safetensors"):
        load_export(str(tmp_path / "a"))


def test_chat_cli(task_and_batch, tmp_path, capsys):
    from jaxft.recipes.embedllm.cli import main

    _, task, _ = task_and_batch
    task.export_fn(str(tmp_path / "e"), task.trainable, task.frozen)
    conv = "Remember the word time.<|turn|>What was the word?<|turn|>The word was"
    (tmp_path / "c.jsonl").write_text(json.dumps({"conversation": conv}) + "\n" + json.dumps({"conversation": conv}))
    chat = load_export(str(tmp_path / "e"))
    expected = chat.reply([conv], max_new_tokens=3)[0]
    assert main(["chat", "--export", str(tmp_path / "e"), "--conversation", conv, "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["chat", "--export", str(tmp_path / "e"), "--conversation", str(tmp_path / "c.jsonl"),
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count(expected) == 2
    assert main(["chat", "--export", str(tmp_path / "e"), "--conversation", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    # a last turn over max_last_turn_tokens is cut, and chat says so (nothing on stderr when nothing is cut)
    long_last = "Remember the word time.<|turn|>" + " ".join(["The word was time."] * 6)
    n_tokens = len(chat.tokenizer(long_last.split("<|turn|>")[1], add_special_tokens=False)["input_ids"])
    assert main(["chat", "--export", str(tmp_path / "e"), "--conversation", long_last, "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert f"note: conversation 1: the last turn has {n_tokens} tokens; kept its first 8 (max_last_turn_tokens)" in err


def test_single_turn_conversations_train_the_empty_history_vector(tmp_path):
    """A conversation without history is trained with the empty-history prefix: its gradient is non-zero,
    and exactly zero on a batch whose every row has a history."""
    convs = ["Say the word time.", "Remember the word data.<|turn|>The word was data.", "Hello there."]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": c}) for c in convs * 4))
    config = get_config("smoke")
    config.data.path, config.data.text_column = str(tmp_path / "c.jsonl"), "text"
    task = build(config, None)
    batch = {k: jnp.asarray(v) for k, v in next(task.train_batches).items()}
    no_history = np.asarray(batch["history_mask"]).reshape(len(batch["input_ids"]), -1).sum(-1) == 0
    assert no_history.any() and not no_history.all()

    def grad_of_empty(rows):
        sub = {k: v[rows] for k, v in batch.items()}
        grads = jax.grad(lambda t: task.loss_fn(t, task.frozen, sub, None)[0])(task.trainable)
        return np.asarray(grads["history"]["empty_history"])

    assert np.abs(grad_of_empty(np.flatnonzero(no_history))).max() > 1e-6
    assert np.abs(grad_of_empty(np.flatnonzero(~no_history))).max() == 0.0


def test_samples_come_from_the_validation_split(task_and_batch):
    """The logged samples open held-out conversations: the validation split's, in its order."""
    from jaxft.data import split_records
    from jaxft.loaders import load_model
    from jaxft.recipes.embedllm.demo import demo_conversations
    from jaxft.recipes.embedllm.recipe import _open_last_turn

    config, task, _ = task_and_batch
    samples = task.samples_fn(task.trainable, task.frozen)
    _, _, tokenizer = load_model(config.model, config.seed)
    texts = demo_conversations(tokenizer, int(config.embedllm.demo.conversations), seed=int(config.seed),
                               num_words=int(config.embedllm.demo.num_words))
    _, valid = split_records(texts, float(config.data.validation_fraction), int(config.seed))
    assert len(samples) == int(config.embedllm.sample.count) == 1
    prompt = samples["sample_0"].split(" ⟶ ")[0]
    assert prompt == _open_last_turn(valid[0], "<|turn|>", int(config.embedllm.sample.prompt_words))
