"""Do the condensed states carry the text? A condenser's AE and continuation losses on the validation
records of a config, next to the frozen decoder's losses on the same targets given no context.

    python -m jaxft.recipes.condense.evaluate --config configs/condense.py:smol --condenser runs/smol/export
    python -m jaxft.recipes.condense.evaluate --config configs/condense.py:smol   # the untrained condenser

    python -m jaxft.recipes.condense evaluate --config configs/condense.py:smol --condenser runs/smol/export

The no-context baseline reads ``[start token][targets[:-1]]`` (the decoder's BOS, else its EOS) instead
of ``[condensed states][marker][targets[:-1]]``: the same targets, the same per-text means. A condenser
trained with the instruction objective (its layout has a prompt budget) is also scored on the instruction
records' completions: ``[condensed context][prompt][completion]`` against ``[start token][prompt][completion]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.errors import cli_boundary
from jaxft.recipes.condense.data import ExampleBuilder
from jaxft.recipes.condense.model import CondenseModel
from jaxft.recipes.condense.objectives import _decode_and_score, inverse_count, make_loss_fn

METRICS = ("ae_loss", "ae_correct", "cont_loss", "cont_correct")
INSTRUCTION_METRICS = ("ins_loss", "ins_correct")


def no_context_sums(model: CondenseModel, dec_params, start_id: int, batch: dict, chunk_size: int | None = None
                    ) -> dict[str, jax.Array]:
    """The AE and continuation sums (as ``condense_loss`` names them) of the decoder reading no context."""
    cfg = model.decoder
    start = jnp.asarray(dec_params["model"]["embed_tokens"]["weight"][start_id], model.dtype)

    def score(ids, mask, weights, loss_mask=None):
        empty = jnp.zeros((ids.shape[0], 0, cfg.hidden_size), model.dtype)
        return _decode_and_score(model, dec_params, empty, jnp.zeros((ids.shape[0], 0), bool), start, ids, mask,
                                 weights, chunk_size, loss_mask=loss_mask)

    dec_mask = batch["dec_mask"].astype(bool)
    ae = score(batch["dec_ids"], dec_mask,
               jnp.broadcast_to(inverse_count(dec_mask.sum(-1, keepdims=True).astype(jnp.float32)), dec_mask.shape))
    b, lv, w = batch["cont_ids"].shape
    cont_mask = batch["cont_mask"].astype(bool)
    level_counts = cont_mask.sum(-1).astype(jnp.float32)
    levels = (level_counts > 0).sum(-1, keepdims=True).astype(jnp.float32)
    weights = jnp.broadcast_to((inverse_count(level_counts) * inverse_count(levels))[..., None], cont_mask.shape)
    cont = score(batch["cont_ids"].reshape(b * lv, w), cont_mask.reshape(b * lv, w), weights.reshape(b * lv, w))
    sums = {"ae_loss": ae.loss_sum, "ae_loss_count": dec_mask.any(-1).sum().astype(jnp.float32),
            "ae_correct": ae.correct, "ae_correct_count": ae.count,
            "cont_loss": cont.loss_sum, "cont_loss_count": (levels[:, 0] > 0).sum().astype(jnp.float32),
            "cont_correct": cont.correct, "cont_correct_count": cont.count}
    if "ins_ids" in batch:  # [start][prompt][completion[:-1]], scored on the completion only
        scored = batch["ins_loss"].astype(bool) & batch["ins_mask"].astype(bool)
        ins_weights = jnp.broadcast_to(inverse_count(scored.sum(-1, keepdims=True).astype(jnp.float32)), scored.shape)
        ins = score(batch["ins_ids"], batch["ins_mask"].astype(bool), ins_weights, scored)
        sums.update({"ins_loss": ins.loss_sum, "ins_loss_count": scored.any(-1).sum().astype(jnp.float32),
                     "ins_correct": ins.correct, "ins_correct_count": ins.count})
    return sums


def compare(condenser, items: list, batch_size: int = 4) -> dict[str, dict[str, float]]:
    """``{"condensed": {...}, "no_context": {...}}``: AE/continuation (and, for instruction records, instruction)
    mean losses and token accuracies of ``items`` (texts, or their ``Tokens``)."""
    tok = condenser.decoder_tokenizer
    start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    model = condenser.model
    instruction = bool(items) and getattr(items[0], "prompt_ids", None) is not None
    loss_fn = make_loss_fn(model, weights={"ae": 1.0, "continuation": 1.0, "instruction": float(instruction)},
                           chunk_size=None)
    dec_params = model.decoder_params(condenser.trainable, condenser.frozen)
    # Parameters are arguments, not closed-over constants (which XLA would copy into the program).
    condensed_fn = jax.jit(lambda trainable, frozen, batch: loss_fn(trainable, frozen, batch, None)[2])
    baseline_fn = jax.jit(lambda params, batch: no_context_sums(model, params, start_id, batch))
    condensed = lambda batch: condensed_fn(condenser.trainable, condenser.frozen, batch)  # noqa: E731
    baseline = lambda batch: baseline_fn(dec_params, batch)  # noqa: E731
    totals = {"condensed": {}, "no_context": {}}
    examples = [condenser.builder(item) for item in items]
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        chunk += [jax.tree.map(np.zeros_like, chunk[0])] * (batch_size - len(chunk))  # filler rows carry nothing
        batch = {key: jnp.asarray(np.stack([e[key] for e in chunk])) for key in chunk[0]}
        for name, fn in (("condensed", condensed), ("no_context", baseline)):
            for key, value in fn(batch).items():
                totals[name][key] = totals[name].get(key, 0.0) + float(value)
    metrics = METRICS + (INSTRUCTION_METRICS if instruction else ())
    return {name: {m: sums[m] / max(sums[m + "_count"], 1.0) for m in metrics} for name, sums in totals.items()}


def validation_items(config, builder) -> list:
    """The validation records of a training run with ``config`` (same filter, same seeded split), as the
    tokens the filter made of them."""
    from jaxft.data import split_records
    from jaxft.recipes.condense.recipe import load_items

    _, tokens, _ = load_items(config, builder)
    return split_records(tokens, float(config.data.validation_fraction), int(config.seed))[1]


def untrained_condenser(config):
    """The condenser a training run with ``config`` starts from (same seed, same initial trees)."""
    from jaxft.recipes.condense.inference import Condenser
    from jaxft.recipes.condense.recipe import build_parts

    parts = build_parts(config)
    return Condenser(model=parts["model"], layout=parts["layout"], trainable=parts["trainable"],
                     frozen=parts["frozen"], encoder_tokenizer=parts["encoder_tokenizer"],
                     decoder_tokenizer=parts["decoder_tokenizer"])


def run_config(path: str):
    """The config a training run wrote to ``<workdir>/config.json`` (the one it trained with, overrides and all)."""
    from ml_collections import ConfigDict

    from jaxft.files import read_json

    return ConfigDict(read_json(Path(path), missing="not found; give a run's <workdir>/config.json or a config file"))


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    from jaxft.config import load_config_file
    from jaxft.recipes.condense.inference import load_condenser

    parser = argparse.ArgumentParser(prog="python -m jaxft.recipes.condense evaluate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the training config (path.py:preset, or a run's "
                        "<workdir>/config.json): its validation records")
    parser.add_argument("--condenser", default="",
                        help="export directory of a trained condenser (default: the config's untrained one, "
                             "as training starts from it)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=0, help="only the first N validation records (0: all)")
    args = parser.parse_args(argv)
    config = run_config(args.config) if args.config.endswith(".json") else load_config_file(args.config)
    condenser = load_condenser(args.condenser) if args.condenser else untrained_condenser(config)
    ins = config.condense.instruction
    builder = ExampleBuilder(condenser.encoder_tokenizer, condenser.decoder_tokenizer, condenser.layout,
                             (ins.context_column, ins.prompt_column, ins.completion_column))
    items = validation_items(config, builder)[: args.limit or None]
    result = compare(condenser, items, args.batch_size)
    print(json.dumps({"records": len(items), **result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
