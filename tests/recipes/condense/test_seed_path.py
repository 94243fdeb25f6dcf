"""The ``seed`` preset end to end, with only its sizes swapped.

A tiny random Llama encoder and a tiny random Mistral decoder (written by ``transformers``, with a
Llama-3-style byte-level BPE tokenizer and a SentencePiece-style Metaspace BPE tokenizer built here) stand
in for Llama-3.2-1B and Mistral-7B-Instruct-v0.2, and a local copy in the layout of the hub dataset
(``data/train-*.parquet`` with the string columns ``task``, ``context``, ``activation_prompt``,
``expected_completion``: what the reference reads and filters on) stands in for
``Condense-AI/benchmark-condense-v0.1``. The sizes (tokens, budgets, steps, eval cadence) are swapped;
the objective and its weights, the masks, the condense-token positions, batch 1, the filters, the
optimizer groups and schedule are ``seed``'s own. The run trains 2 steps, evaluates with samples and
exports; every condense inference command then runs on the export through the CLI, and the numbers are
checked against ``transformers`` + ``peft`` computing the reference's forward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
# Only sizes: everything else comes from configs/condense.py:seed.
SIZES = {
    "condense.max_tokens": 64,  # 4096 in seed; the compression ratio (8) stays: 8 condensed states
    "condense.max_decoder_tokens": 160,
    "condense.instruction.max_prompt_tokens": 24,
    "condense.instruction.max_completion_tokens": 24,
    "condense.samples.max_new_tokens": 6,
    "train.epochs": 0.1,  # of the 18 training records at batch 1: 2 steps
    "train.eval_every": 2,
    "checkpoint.every": 2,
    "train.eval_batches": 2,
}
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ANIMALS = "fox owl cat hare wolf crow mole deer".split()


def records() -> list[dict[str, str]]:
    rows = []
    for i in range(20):
        animal, hours = ANIMALS[i % len(ANIMALS)], 2 + i % 7
        context = (f"Report {i}. The {animal} wakes at dawn, walks to the river and drinks. "
                   f"Later the {animal} sleeps for {hours} hours under the old bridge, then hunts. " * (1 + i % 3))
        if i % 2:
            rows.append(dict(task="question_answering", context=context,
                             activation_prompt=f"[INST] How long does the {animal} sleep? [/INST]",
                             expected_completion=f" The {animal} sleeps for {hours} hours."))
        else:
            rows.append(dict(task="reconstruction", context=context,
                             activation_prompt="[INST] Write the text above again. [/INST]",
                             expected_completion=" " + context[:120]))
    return rows


def llama3_style_tokenizer(corpus: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=[
        "<|begin_of_text|>", "<|end_of_text|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")


def mistral_style_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    return LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def save_models(tmp: Path, corpus: list[str]) -> tuple[Path, Path]:
    import torch
    import transformers

    enc_tok, dec_tok = llama3_style_tokenizer(corpus), mistral_style_tokenizer(corpus)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
    enc = transformers.LlamaConfig(vocab_size=len(enc_tok), tie_word_embeddings=True, **common,
                                   bos_token_id=enc_tok.bos_token_id, eos_token_id=enc_tok.eos_token_id,
                                   rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0,
                                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                                        original_max_position_embeddings=64))
    dec = transformers.MistralConfig(vocab_size=len(dec_tok), tie_word_embeddings=False, sliding_window=None,
                                     bos_token_id=1, eos_token_id=2, **common,
                                     rope_parameters=dict(rope_type="default", rope_theta=1e6))
    dirs = []
    for seed, (name, config, tok) in enumerate((("encoder", enc, enc_tok), ("decoder", dec, dec_tok))):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # a decoder that reacts to its inputs (init std 0.02 barely does)
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, 0.25)
        model.save_pretrained(tmp / name)
        tok.save_pretrained(tmp / name)
        dirs.append(tmp / name)
    return dirs[0], dirs[1]


def run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (args, (proc.stdout + proc.stderr)[-4000:])
    return proc


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seed")
    rows = records()
    data = tmp / "benchmark-condense" / "data"
    data.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00001.parquet")
    corpus = [r[c] for r in rows for c in ("context", "activation_prompt", "expected_completion")]
    encoder, decoder = save_models(tmp, corpus)
    paths = {"encoder.path": encoder, "decoder.path": decoder, "data.hf_dataset": data.parent}
    overrides = [f"--config.{k}={v}" for k, v in {**paths, **SIZES}.items()]
    workdir = tmp / "run"
    train = run(["-m", "jaxft.main", "--config", f"{ROOT / 'configs' / 'condense.py'}:seed", f"--workdir={workdir}",
                 *overrides])
    export = workdir / "export"
    context = max((r["context"] for r in rows if r["task"] == "question_answering"), key=len)
    (tmp / "context.txt").write_text(context)
    cli = ["-m", "jaxft.recipes.condense"]
    out = {"train": train.stdout + train.stderr}
    states = tmp / "states.npy"
    out["compress"] = run([*cli, "compress", "--condenser", str(export), "--file", str(tmp / "context.txt"),
                           "--out", str(states)]).stdout
    prompt = "[INST] How long does the fox sleep? [/INST]"
    for mode in ("continue", "reconstruct", "prompt"):
        out[mode] = run([*cli, "generate", "--condenser", str(export), "--compressed", str(states), "--mode", mode,
                         "--prompt", prompt if mode == "prompt" else "", "--max-new-tokens", "5"]).stdout
    out["evaluate"] = run([*cli, "evaluate", "--config", str(workdir / "config.json"), "--condenser",
                           str(export)]).stdout
    return dict(tmp=tmp, export=export, workdir=workdir, states=np.load(states), context=context, prompt=prompt,
                out=out, rows=rows)


def test_seed_trains_and_samples_the_instruction_objective(seed_run):
    log = seed_run["out"]["train"]
    assert "train.epochs=0.1 over 18 train records at batch 1: train.steps=2" in log
    assert "objectives instruction x1" in log and "8 condensed states (8x) at after_padding positions" in log
    assert "step 2: eval ins_correct=" in log and "ins_loss=" in log
    # the samples read [states][activation_prompt] and show the expected completion beside what came out
    for key in ("[context]", "[prompt] [INST]", "[completion]", "[expected_completion]"):
        assert key in log, key
    meta = json.loads((seed_run["export"] / "condenser.json").read_text())
    assert meta["positions"] == "after_padding" and meta["layout"]["max_prompt_tokens"] == 24
    assert meta["layout"]["num_condense_tokens"] == 8 and meta["layout"]["segment_length"] == 64


def _reference(seed_run):
    """The R1 computation in torch: the PEFT-adapted encoder over ``[context padded to L][condense tokens]``
    (no position ids: transformers numbers the slots 0..L+n-1), LayerNorm of its last two hidden states at
    the condense slots, linear; then the frozen decoder over ``[states][prompt]``."""
    import peft
    import torch
    import transformers
    from safetensors.numpy import load_file

    export = seed_run["export"]
    enc_tok = transformers.AutoTokenizer.from_pretrained(export / "encoder_tokenizer")
    encoder = transformers.AutoModelForCausalLM.from_pretrained(seed_run["tmp"] / "encoder", dtype=torch.float32)
    encoder = peft.PeftModel.from_pretrained(encoder, export / "adapter").eval()
    decoder = transformers.AutoModelForCausalLM.from_pretrained(seed_run["tmp"] / "decoder", dtype=torch.float32)
    weights = {k: torch.from_numpy(v) for k, v in load_file(export / "condenser.safetensors").items()}
    return enc_tok, encoder, decoder.eval(), weights


def reference_states(seed_run, context: str) -> np.ndarray:
    import torch

    enc_tok, encoder, _, w = _reference(seed_run)
    enc_tok.pad_token = enc_tok.eos_token  # as R1's train.py sets it
    length, n = 64, 8
    ids = enc_tok(context, add_special_tokens=False, max_length=length, truncation=True, padding="max_length")
    tokens = encoder.get_input_embeddings()(torch.tensor([ids["input_ids"]]))
    embeds = torch.cat([tokens, w["condense_tokens"][None]], dim=1)
    mask = torch.cat([torch.tensor([ids["attention_mask"]]), torch.ones(1, n, dtype=torch.long)], dim=1)
    with torch.no_grad():
        hidden = encoder(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states
        last_two = torch.cat(hidden[-2:], dim=-1)[:, -n:]
        normed = torch.nn.functional.layer_norm(last_two, (last_two.shape[-1],), w["projector.norm.scale"],
                                                w["projector.norm.bias"], eps=1e-5)
        return (normed @ w["projector.linear.kernel"] + w["projector.linear.bias"])[0].numpy()


def test_compress_gives_the_reference_states(seed_run):
    """float32: the export's states equal the torch computation (positions 64..71 after the padded context,
    as R1's 4096..4607); the CLI's bfloat16 states are those within bfloat16's precision."""
    from jaxft.recipes.condense.inference import load_condenser

    reference = reference_states(seed_run, seed_run["context"])
    ours = load_condenser(seed_run["export"], dtype="float32").compress(seed_run["context"])
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)
    cli = seed_run["states"]
    assert cli.shape == (8, 64) and "8 condensed states of size 64" in seed_run["out"]["compress"]
    assert np.abs(cli - reference).max() < 0.05 * np.abs(reference).max()
    # the spread positions give other states: the position option is what makes them R1's
    from jaxft.recipes.condense import model as model_lib
    import dataclasses

    condenser = load_condenser(seed_run["export"], dtype="float32")
    condenser.model = dataclasses.replace(condenser.model, positions="spread")
    assert np.abs(condenser.compress(seed_run["context"]) - reference).max() > 1e-3
    assert model_lib.POSITIONS == ("spread", "after_padding")


def test_generate_prompt_mode_is_the_reference_greedy_decode(seed_run):
    """``generate --mode prompt`` reads [states][prompt] with no marker: the same tokens as transformers' greedy
    decode from those embeddings (float32); each CLI mode printed a text."""
    import torch

    from jaxft.recipes.condense.inference import load_condenser

    condenser = load_condenser(seed_run["export"], dtype="float32")
    states = condenser.compress(seed_run["context"])
    ours = condenser.generate(states, seed_run["prompt"], mode="prompt", max_new_tokens=6, stop_at_eos=False)
    _, _, decoder, _ = _reference(seed_run)
    tok = condenser.decoder_tokenizer
    prompt_ids = torch.tensor([tok(seed_run["prompt"], add_special_tokens=False)["input_ids"]])
    embeds = torch.cat([torch.from_numpy(states)[None], decoder.get_input_embeddings()(prompt_ids)], dim=1)
    decoder.generation_config.eos_token_id = None
    with torch.no_grad():
        generated = decoder.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert ours == tok.decode(generated[0], skip_special_tokens=True)
    # the CLI (the export's bfloat16) printed what the same calls give on the states it wrote
    cli_condenser = load_condenser(seed_run["export"])
    for mode in ("continue", "reconstruct", "prompt"):
        prompt = seed_run["prompt"] if mode == "prompt" else ""
        expected = cli_condenser.generate(seed_run["states"], prompt, mode=mode, max_new_tokens=5)
        assert seed_run["out"][mode] == expected + "\n", mode


def test_evaluate_scores_completions_against_transformers(seed_run):
    """``condense evaluate`` on the run's config: the condensed and the no-context completion losses of the 2
    validation records equal transformers' cross-entropy over the same inputs (bfloat16 CLI vs float32)."""
    import torch

    from jaxft.recipes.condense import evaluate
    from jaxft.recipes.condense.data import ExampleBuilder
    from jaxft.recipes.condense.inference import load_condenser

    result = json.loads(seed_run["out"]["evaluate"])
    assert result["records"] == 2 and set(result["condensed"]) >= {"ins_loss", "ins_correct", "ae_loss"}
    condenser = load_condenser(seed_run["export"], dtype="float32")
    config = evaluate.run_config(str(seed_run["workdir"] / "config.json"))
    builder = ExampleBuilder(condenser.encoder_tokenizer, condenser.decoder_tokenizer, condenser.layout)
    items = evaluate.validation_items(config, builder)
    _, _, decoder, _ = _reference(seed_run)
    table = decoder.get_input_embeddings()
    condensed, baseline = [], []
    for tokens in items:
        states = condenser._compress(builder.example(tokens))
        prompt, completion = (torch.tensor(t, dtype=torch.long) for t in (tokens.prompt_ids, tokens.completion_ids))
        targets = torch.cat([prompt, completion])
        for prefix, losses in ((torch.from_numpy(states), condensed), (table(torch.tensor([1]))[0].detach(), baseline)):
            embeds = torch.cat([prefix.reshape(-1, 64), table(targets[:-1])], dim=0)[None]
            with torch.no_grad():
                logits = decoder(inputs_embeds=embeds).logits[0, -len(targets):]
            losses.append(float(torch.nn.functional.cross_entropy(logits[len(prompt):], completion)))
    np.testing.assert_allclose(result["condensed"]["ins_loss"], np.mean(condensed), rtol=2e-2)
    np.testing.assert_allclose(result["no_context"]["ins_loss"], np.mean(baseline), rtol=2e-2)
    exact = evaluate.compare(condenser, items, batch_size=2)  # float32: to the reference's precision
    np.testing.assert_allclose(exact["condensed"]["ins_loss"], np.mean(condensed), rtol=1e-4)
    np.testing.assert_allclose(exact["no_context"]["ins_loss"], np.mean(baseline), rtol=1e-4)
