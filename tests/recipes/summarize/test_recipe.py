"""The summarize recipe end to end on its smoke preset: loss against a float64 transcription, training with
resume, eval metrics, export and reload; data from JSONL files and a saved datasets directory; CLI errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxft import lora as lora_lib
from jaxft.loaders import load_model
from jaxft.models.decoder import forward
from jaxft.recipes.summarize import build, load_export, summary_encoder
from jaxft.recipes.summarize.cli import main
from jaxft.recipes.summarize.data import load_pairs
from jaxft.recipes.summarize.evaluation import evaluate_summaries, rouge_scores
from tests.configs import recipe_config
from tests.recipes.summarize.test_loss import transcribed_loss


def smoke(**summarize):
    c = recipe_config("summarize", "smoke")
    c.checkpoint.async_save = False
    c.summarize.update(summarize)
    return c


def _perturbed(trainable):
    """LoRA B starts at zero; random factors make the adapters change the logits."""
    leaves, tree = jax.tree.flatten(trainable)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def _logits(config, trainable, batch):
    cfg, params, _ = load_model(config.model, config.seed)
    lcfg = config.lora
    lora_config = lora_lib.init(jax.random.PRNGKey(config.seed + 1), cfg, params, rank=int(lcfg.rank),
                                alpha=float(lcfg.alpha), targets=tuple(lcfg.targets)).config
    adapted = lora_lib.apply(params, lora_lib.LoRA(trainable["lora"], lora_config))
    logits, _ = forward(cfg, adapted, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                        output="logits", dtype=jnp.float32)
    return np.asarray(logits, np.float64)


@pytest.mark.parametrize("boundary", [True, False])
def test_loss_fn_equals_the_float64_transcription(boundary):
    config = smoke(use_boundary_detection=boundary)
    task = build(config, None)
    batch = next(task.train_batches)
    trainable = _perturbed(task.trainable)
    loss_sum, weight_sum, metrics = jax.jit(task.loss_fn)(trainable, task.frozen, batch, None)
    mask = batch["loss_mask"]
    assert float(weight_sum) == mask.sum()  # |V|: the number of targets, not the sum of the weights
    logits = _logits(config, trainable, batch)
    want = transcribed_loss(logits, batch["input_ids"], mask, 4, 2.0, 0.1 if boundary else 0.0)
    plain = transcribed_loss(logits, batch["input_ids"], mask, 4, 2.0, 0.0)
    assert float(loss_sum) / float(weight_sum) == pytest.approx(want, rel=2e-5)
    assert float(metrics["ce"]) / float(metrics["ce_count"]) == pytest.approx(plain, rel=2e-5)
    assert (want > plain * 1.05) == boundary


@pytest.mark.slow
def test_smoke_trains_evaluates_exports_and_reloads(tmp_path):
    from jaxft.train.trainer import Trainer

    config = smoke()
    config.train.steps, config.train.eval_every = 2, 2  # resuming is the contract test's
    trainer = Trainer(config, tmp_path, build)
    history = trainer.run()
    step, metrics = history["eval"][-1]
    assert step == 2
    _, exported = trainer.export_params()  # the only eval's parameters, so the logged metrics are theirs
    (batch,) = list(trainer.task.eval_batches())
    logits = _logits(config, jax.device_get(exported), batch)
    mask = batch["loss_mask"]
    assert metrics["loss"] == pytest.approx(transcribed_loss(logits, batch["input_ids"], mask, 4, 2.0, 0.1), rel=2e-5)
    assert metrics["ce"] == pytest.approx(transcribed_loss(logits, batch["input_ids"], mask, 4, 2.0, 0.0), rel=2e-5)

    export = trainer.export()
    results = json.loads((export / "evaluation_results.json").read_text())
    assert results["num_samples"] == 3 and len(results["samples"]) == 3  # 5% of 64 pairs validate
    # the logged ROUGE and lengths are those of the summaries the export wrote (same parameters, greedy)
    generated = [s["generated_summary"] for s in results["samples"]]
    scores = rouge_scores(generated, [s["target_summary"] for s in results["samples"]])
    for name in ("rouge1", "rouge2", "rougeL"):
        assert metrics[name] == pytest.approx(scores[name], abs=1e-12) == pytest.approx(results[name], abs=1e-12)
    assert metrics["avg_summary_length"] == pytest.approx(np.mean([len(g.split()) for g in generated]))

    loaded = load_export(str(export))
    assert loaded.adapters is not None and loaded.settings["base_model"] is None
    _, exported = trainer.export_params()
    for want, got in zip(jax.tree.leaves(jax.device_get(exported["lora"])), jax.tree.leaves(loaded.adapters.params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    config = loaded.config()
    _, valid, _ = load_pairs(config)
    from jaxft.recipes.summarize.recipe import decode_settings, eval_subset

    again = evaluate_summaries(loaded.cfg, loaded.params, loaded.tokenizer, summary_encoder(loaded),
                               eval_subset(valid, 3, config.seed), decode=decode_settings(config.summarize),
                               lora=loaded.adapters, batch_size=4, seed=config.seed)
    # greedy decoding of the reloaded export reproduces the summaries written at export time
    assert [s["generated_summary"] for s in again["samples"]] == [s["generated_summary"] for s in results["samples"]]

    written = (export / "evaluation_results.json").read_text()
    assert main(["evaluate", "--export", str(export), "--eval-samples", "2", "--base"]) == 0
    base = json.loads((export / "evaluate_validation_base.json").read_text())
    assert base["model"] == "base" and base["num_samples"] == 2
    assert main(["evaluate", "--export", str(export), "--eval-samples", "2"]) == 0
    assert json.loads((export / "evaluate_validation.json").read_text())["num_samples"] == 2
    assert (export / "evaluation_results.json").read_text() == written  # training's 3-sample results stay
    assert main(["evaluate", "--export", str(export), "--output", str(export / "evaluation_results.json")]) == 2

    rows = [{"article": f"Item {i} is stored in the table.", "highlights": f"Item {i}."} for i in range(3)]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "other.json"
    assert main(["evaluate", "--export", str(export), "--data", str(tmp_path / "val.jsonl"), "--output", str(out)]) == 0
    other = json.loads(out.read_text())
    assert [s["target_summary"] for s in other["samples"]] == ["Item 0.", "Item 1.", "Item 2."]


def test_load_export_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "summarize.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_export(str(tmp_path))
    assert main(["generate", "--export", str(tmp_path / "nope"), "--text", "x"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope'}: no such export directory"


def test_pairs_from_jsonl_files_with_named_columns(tmp_path):
    rows = [{"text": f"Document number {i} talks about item {i}.", "abstract": f"Item {i}."} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[10:]) + "\n")
    c = smoke()
    c.data.path = str(tmp_path / "train.jsonl")
    c.data.document_column, c.data.summary_column = "text", "abstract"
    c.summarize.validation_path = str(tmp_path / "val.jsonl")
    train, valid, source = load_pairs(c)
    assert [r["summary"] for r in train] == [f"Item {i}." for i in range(10)]
    assert valid[1] == {"document": "Document number 11 talks about item 11.", "summary": "Item 11."}
    assert valid.origins[1].endswith("val.jsonl:2")
    none, valid_only, _ = load_pairs(c, train=False)  # evaluate reads only the validation file
    assert none is None and list(valid_only) == list(valid)
    c.summarize.validation_path = ""  # a seeded fraction of the training file instead
    c.data.validation_fraction = 0.2
    train, valid, _ = load_pairs(c)
    assert len(train) == 8 and len(valid) == 2


def test_missing_column_is_one_line(tmp_path):
    from jaxft.data import DataError

    (tmp_path / "bad.jsonl").write_text(json.dumps({"article": "a", "highlights": "b"}) + "\n" +
                                        json.dumps({"article": "c"}) + "\n")
    c = smoke()
    c.data.path = str(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:2: column 'highlights'"):
        load_pairs(c)


def test_pairs_from_a_saved_datasets_directory(tmp_path):
    import datasets

    def split(n, tag):
        return datasets.Dataset.from_dict({"article": [f"{tag} article {i}." for i in range(n)],
                                           "highlights": [f"{tag} {i}." for i in range(n)], "id": list(range(n))})

    datasets.DatasetDict({"train": split(6, "train"), "validation": split(3, "val")}).save_to_disk(tmp_path / "cnn")
    c = smoke()
    c.data.hf_dataset, c.data.hf_config = str(tmp_path / "cnn"), ""
    c.summarize.validation_split = "validation"
    train, valid, _ = load_pairs(c)
    assert len(train) == 6 and [r["summary"] for r in valid] == ["val 0.", "val 1.", "val 2."]


def _quantized_kernels(tree):
    from jaxft.quant.kernel import QuantizedKernel

    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedKernel))
    return [x for x in leaves if isinstance(x, QuantizedKernel)]


def test_double_quant_reaches_the_base():
    config = smoke()
    config.model.quantize, config.model.double_quant = "nf4", True
    kernels = _quantized_kernels(build(config, None).frozen["base"])
    assert kernels and all(k.scale_scales is not None and k.scales.dtype == jnp.uint8 for k in kernels)


def test_epochs_set_the_steps_from_the_pairs_read():
    config = smoke(epochs=2.0)
    from jaxft.settings import parse_settings, resolve_epochs

    train, _, _ = load_pairs(config)
    task = build(config, None)
    resolve_epochs(config, parse_settings(config), task.train_records)
    assert len(train) == 61 and config.train.steps == -(-2 * 61 // 4)  # 64 records, 5% validate


@pytest.mark.slow
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_base_trains_exports_and_reloads(tmp_path, double_quant):
    config = smoke()
    config.model.quantize, config.model.double_quant = "nf4", double_quant
    task = build(config, None)
    loss_sum, count, _ = jax.jit(task.loss_fn)(task.trainable, task.frozen, next(task.train_batches), None)
    assert np.isfinite(float(loss_sum / count))
    task.export_fn(str(tmp_path), task.trainable, task.frozen)
    loaded = load_export(str(tmp_path))
    assert loaded.settings["quantize"] == "nf4" and loaded.settings["double_quant"] is double_quant
    assert all((k.scale_scales is not None) is double_quant for k in _quantized_kernels(loaded.params))
    # the saved base is the dequantized NF4 base: quantizing it again gives back the same codes (with double
    # quantization the block maxima go through the 8-bit code a second time: each moves by under 1%)
    leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    if not double_quant:
        for want, got in zip(leaves(task.frozen["base"]), leaves(loaded.params)):
            np.testing.assert_array_equal(got, want)
    for want, got in zip(_quantized_kernels(task.frozen["base"]), _quantized_kernels(loaded.params)):
        np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(want.codes))
        np.testing.assert_allclose(np.asarray(got.materialize(jnp.float32)), np.asarray(want.materialize(jnp.float32)),
                                   rtol=1e-2, atol=1e-6)


def test_validation_loss_scores_a_seeded_subset_of_the_whole_split():
    """train.eval_batches × batch pairs for the best-checkpoint loss, drawn over the whole split (not its head)."""
    from jaxft.recipes.summarize.data import SummaryEncoder, seeded_subset
    from jaxft.recipes.summarize.recipe import summary_data

    config = smoke()
    config.data.validation_fraction = 0.5
    config.train.eval_batches = 2
    _, _, tokenizer = load_model(config.model, config.seed)
    data = summary_data(config, tokenizer)
    rows = [row for batch in data.eval_batches() for row, weight in zip(batch["input_ids"], batch["loss_mask"])
            if weight.any()]
    count = 2 * int(config.train.batch_size)
    chosen = seeded_subset(data.valid_records, count, int(config.seed))
    assert len(data.valid_records) > count and len(rows) == count
    assert [r["summary"] for r in chosen] != [r["summary"] for r in data.valid_records[:count]]
    encoder = SummaryEncoder(tokenizer, int(config.summarize.max_input_length), int(config.summarize.max_target_length))
    want, _ = encoder.encode([(r["document"], r["summary"]) for r in chosen])
    for row, example in zip(rows, want):
        assert row[:len(example["input_ids"])].tolist() == example["input_ids"].tolist()


def test_the_run_reports_the_trainable_parameters_as_n(capsys):
    """N of the Chinchilla report at start is the LoRA parameter count (the reference from ef3cecc)."""
    from jaxft.recipes.summarize.scaling import format_count

    task = build(smoke(scaling_report=True), None)
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.trainable))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.frozen["base"]))
    printed = capsys.readouterr().out
    assert f"Trainable LoRA Parameters: {format_count(trainable)}\n" in printed
    assert f"Base Model Size: {format_count(total + trainable)} parameters\n" in printed
