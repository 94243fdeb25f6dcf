"""The gist design (condense.design=gist) against a torch transcription of the reference's code at 4c5c879
(compress/modeling/causal_lm.py, objectives/auto_encoding.py, objectives/completing.py, lit.py): the same
tiny random Llama (transformers) as compressor with the same PEFT LoRA and as frozen target; the spans,
gist slots, flags, positions, masks and labels of both objectives give the same losses. Then the
seed_gist preset, sizes swapped, trains two steps and exports."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft.recipes.condense import gist
from tests.configs import recipe_config
from tests.recipes.condense.helpers import byte_tokenizer

VOCAB, PAD = 64, 63  # the reference adds a '<pad>' token; here the last id, never a real token
LAYOUT = gist.GistLayout(span_length=8, num_gist_tokens=4, max_tokens=32)


def _reference_loss(compressor, target, gist_tokens, ae_flag, lm_flag, ids, mask, span, n):
    """The reference's forward at batch 1, transcribed: (ae, completing), each a mean of HF losses."""
    import torch

    f = ae_flag.shape[0]
    # MultiSpanGistCausalLM.forward: split into spans, drop the ones of padding only
    spans = [(s, m) for s, m in zip(ids.split(span, 1), mask.split(span, 1)) if not torch.all(s == PAD)]
    # GistCausalLM: [span][gist tokens] at positions [0..L-1][0, r, 2r, ..], hidden_states[-1] at the gist slots
    enc_pos = torch.cat([torch.arange(0, span), torch.arange(0, span, span // n)])[None]
    feats = []
    for s, m in spans:
        x = torch.cat([compressor.get_input_embeddings()(s), gist_tokens[None]], 1)
        out = compressor(inputs_embeds=x, attention_mask=torch.cat([m, torch.ones(1, n)], 1), position_ids=enc_pos,
                         output_hidden_states=True)
        feats.append(out.hidden_states[-1][:, -n:])
    embeds = [target.get_input_embeddings()(s) for s, _ in spans]

    def labels(prefix: int, s):  # lit.get_loss: labels[labels == pad_token_id] = -100
        lab = torch.cat([torch.full((1, prefix), -100), s], 1)
        return lab.masked_fill(lab == PAD, -100)

    ae_pos = torch.cat([torch.arange(0, span, span // n), torch.zeros(f, dtype=torch.long),
                        torch.arange(1, span + 1)])[None]
    ae = [target(inputs_embeds=torch.cat([feat, ae_flag[None], e], 1), labels=labels(n + f, s), position_ids=ae_pos,
                 attention_mask=torch.cat([torch.ones(1, n + f), m], 1)).loss
          for feat, e, (s, m) in zip(feats, embeds, spans)]
    lm = []
    for i in range(1, len(spans)):
        prefix = torch.cat(feats[:i], 1)
        x = torch.cat([prefix, lm_flag[None], torch.cat(embeds[i:], 1)], 1)
        s, m = torch.cat([s for s, _ in spans[i:]], 1), torch.cat([m for _, m in spans[i:]], 1)
        lm.append(target(inputs_embeds=x, labels=labels(prefix.shape[1] + f, s),
                         position_ids=torch.arange(0, x.shape[1])[None],
                         attention_mask=torch.cat([torch.ones(1, prefix.shape[1] + f), m], 1)).loss)
    return float(sum(ae) / len(ae)), float(sum(lm) / len(lm))


def _tiny_llama(directory):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, tie_word_embeddings=False))
    model.save_pretrained(directory)
    return model


def test_gist_layout_and_losses_equal_the_reference_transcription(tmp_path):
    import peft
    import torch
    import transformers

    from jaxft import lora as lora_lib
    from jaxft.checkpoint.hf import load_pretrained

    _tiny_llama(tmp_path / "llm")
    cfg, params = load_pretrained(tmp_path / "llm", dtype=jnp.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    adapters = lora_lib.init(keys[0], cfg, params, rank=4, alpha=8.0)
    lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(keys[1], x.shape), adapters.params)  # b != 0
    model = gist.GistModel(llm=cfg, layout=LAYOUT, lora_config=adapters.config)
    trainable = {"lora": lora, **gist.init_params(keys[2], model)}
    lora_lib.save_peft(tmp_path / "adapter", cfg, lora_lib.LoRA(lora, adapters.config))

    rs = np.random.RandomState(0)
    texts = [rs.randint(0, PAD, 28).tolist(), rs.randint(0, PAD, 13).tolist()]  # 4 spans (8, 8, 8, 4); 2 (8, 5)
    examples = [gist.span_example(t, LAYOUT) for t in texts]
    # The spans and their masks, independently: real tokens fill the spans in order, padding only at the end.
    assert [e["mask"].sum(-1).tolist() for e in examples] == [[8, 8, 8, 4], [8, 5, 0, 0]]
    np.testing.assert_array_equal(examples[0]["ids"].ravel()[:28], texts[0])
    assert gist.level_width(LAYOUT, 1) == (4 + 1, 24) and gist.level_width(LAYOUT, 3) == (12 + 1, 8)
    np.testing.assert_array_equal(gist.encoder_positions(LAYOUT), list(range(8)) + [0, 2, 4, 6])
    batch = {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in ("ids", "mask")}
    loss_sum, texts_n, metrics = jax.jit(lambda t, b: gist.gist_loss(
        model, t, {"llm": params}, b, None, weights={"ae": 1.0, "continuation": 1.0}))(trainable, batch)
    assert float(texts_n) == 2

    compressor = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llm"),
                                                tmp_path / "adapter").eval()
    target = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llm").eval()
    flags = trainable["flags"]
    t = {k: torch.tensor(np.asarray(v)) for k, v in (("gist", trainable["gist_tokens"]), ("ae", flags["ae"]),
                                                     ("lm", flags["lm"]))}
    refs = []
    with torch.no_grad():
        for text in texts:
            ids = torch.full((1, LAYOUT.max_tokens), PAD)
            ids[0, :len(text)] = torch.tensor(text)
            mask = (ids != PAD).long()
            refs.append(_reference_loss(compressor, target, t["gist"], t["ae"], t["lm"], ids, mask, 8, 4))
    ae_ref, lm_ref = np.mean([r[0] for r in refs]), np.mean([r[1] for r in refs])
    assert float(metrics["ae_loss"]) / 2 == pytest.approx(ae_ref, abs=1e-4)
    assert float(metrics["lm_loss"]) / 2 == pytest.approx(lm_ref, abs=1e-4)
    assert float(loss_sum) / 2 == pytest.approx(ae_ref + lm_ref, abs=1e-4)
    # Every real token is scored once per objective it is a target of: AE all 28 + 13; completing level i of
    # text 0 scores the 28 - 8i tokens after span i - 1, text 1's one level its 5.
    assert int(metrics["ae_correct_count"]) == 41 and int(metrics["lm_correct_count"]) == 20 + 12 + 4 + 5


def _chat_texts(n: int) -> list[str]:
    turns = "the cat sat on the mat and then the dog ran far away".split()
    rs = np.random.RandomState(1)
    return [f"<|user|>{' '.join(rs.choice(turns, 30))}<|assistant|>{' '.join(rs.choice(turns, 40 + i))}"
            for i in range(n)]


@pytest.mark.slow
def test_seed_gist_trains_two_steps_and_exports(tmp_path, capsys):
    from jaxft.recipes.condense.recipe import build
    from jaxft.train.trainer import Trainer

    config = recipe_config("condense", "seed_gist")
    # Only the sizes swapped: a tiny random Llama with a byte tokenizer, spans of 32 bytes -> 16 gist tokens.
    config.encoder.update(dict(path="", tokenizer="demo:byte", dtype="float32", compute_dtype="float32",
                               remat="none", random_init=dict(
                                   model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)))
    config.decoder.path = ""
    config.lora.update(dict(rank=4, alpha=4.0))
    config.condense.gist.update(dict(span_tokens=32, gist_tokens=16, max_tokens=128, min_characters=200))
    data = tmp_path / "chats.jsonl"
    texts = _chat_texts(12) + ["<|user|>too short"]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config.data.path = str(data)
    config.train.epochs, config.train.steps, config.train.eval_every, config.train.eval_batches = 0.0, 2, 2, 1
    config.checkpoint.every, config.train.log_every = 2, 1
    config.optim.groups.gist_tokens.lr = config.optim.groups.flags.lr = config.optim.groups.lora.lr = 1e-2
    trainer = Trainer(config, tmp_path / "run", build)
    assert "12 of 13 texts kept (1 of at most condense.gist.min_characters=200" in trainer.task.description
    history = trainer.run()
    losses = [loss for _, loss in history["train_loss"]]
    assert len(losses) == 2 and np.isfinite(losses).all() and losses[1] < losses[0]
    step, metrics = history["eval"][-1]
    assert step == 2 and np.isfinite(metrics["loss"])
    assert metrics["loss"] == pytest.approx(metrics["ae_loss"] + metrics["lm_loss"], rel=1e-5)
    # The reference's sample: [gist of span 0][LM flag][8 tokens of span 1] -> greedy text; the gisted text and
    # the target split the sample text after those 8 tokens.
    tokenizer = byte_tokenizer()
    sample = trainer.task.samples_fn(jax.device_get(trainer.task.trainable), trainer.task.frozen)
    assert set(sample) == {"gisted", "target", "generated"} and sample["generated"]
    tokens = [tokenizer(t, add_special_tokens=True)["input_ids"][:128] for t in texts]
    splits = {(tokenizer.decode(i[:40]), tokenizer.decode(i[40:])) for i in tokens}  # 32 + 8 tokens gisted
    assert (sample["gisted"], sample["target"]) in splits
    export = trainer.export()
    meta = json.loads((export / "gist.json").read_text())
    assert (meta["span_tokens"], meta["gist_tokens"], meta["max_tokens"]) == (32, 16, 128)
    assert (export / "adapter" / "adapter_config.json").is_file()
    _, exported = trainer.export_params()
    _export_compresses_and_generates(export, jax.device_get(exported), trainer.frozen, texts[0], tokenizer,
                                     tmp_path, capsys)


def _export_compresses_and_generates(export, trainable, frozen, text, tokenizer, tmp_path, capsys):
    """The export's compress and generate give the trained trees' own gists and greedy text, from Python
    and from ``python -m jaxft.recipes.condense``; the modes it was not trained for are one line."""
    from jaxft.recipes.condense.__main__ import main
    from jaxft.recipes.condense.gist_inference import GistCondenser, complete, text_tokens
    from jaxft.recipes.condense.inference import load_condenser

    condenser = load_condenser(export)
    assert isinstance(condenser, GistCondenser)
    model = condenser.model
    ex = gist.span_example(text_tokens(tokenizer, text, model.layout), model.layout)
    want = np.asarray(gist.gist_features_jit(model, trainable, frozen, ex["ids"][None], ex["mask"][None]))[0]
    spans = int(ex["mask"].any(-1).sum())
    states = condenser.compress(text)
    assert states.shape == (spans * 16, 32)
    np.testing.assert_allclose(states, want[:spans].reshape(-1, 32), rtol=1e-5, atol=1e-6)
    prompt_ids = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    tokens = complete(model, trainable, frozen, want[0], prompt_ids, 12)
    assert condenser.generate(states[:16], "the cat", max_new_tokens=12) == tokenizer.decode(
        tokens, skip_special_tokens=True)

    out = tmp_path / "gists.npy"
    assert main(["compress", "--condenser", str(export), "--text", text, "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), states)
    capsys.readouterr()
    assert main(["generate", "--condenser", str(export), "--compressed", str(out), "--prompt", "the cat",
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == condenser.generate(states, "the cat", max_new_tokens=12)
    assert main(["generate", "--condenser", str(export), "--text", text, "--mode", "reconstruct"]) == 2
    err = capsys.readouterr().err
    assert "a gist-design export generates in the completing form only" in err and "Traceback" not in err


def test_bench_plans_the_seed_gist_preset_as_configured():
    """What `python -m jaxft.bench plan --recipe condense --preset seed_gist` compiles (shapes only)."""
    from jaxft.bench import plan

    (cfg, _, fmt, _), = plan.condense_loads(jnp.bfloat16, "seed_gist")  # one LLM, loaded once
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, fmt) == (4096, 32, 128256, "none")
    trainable, frozen, _, batch, what, _ = plan.gist_parts(recipe_config("condense", "seed_gist"), jnp.bfloat16)
    assert batch == {"ids": ((1, 4, 256), "int32"), "mask": ((1, 4, 256), "bool")}
    assert trainable["gist_tokens"].shape == (128, 4096) and trainable["flags"]["ae"].shape == (1, 4096)
    assert trainable["lora"]["model"]["layers"]["mlp"]["gate_proj"]["a"].shape == (32, 4096, 256)
    assert list(frozen) == ["llm"] and "128 gist tokens each" in what
