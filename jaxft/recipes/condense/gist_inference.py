"""Use a gist-design export (``condense.design=gist``): ``compress(text)`` -> the gists of its spans,
``generate(gists, prompt)`` -> greedy text from ``[gists][LM flags][prompt]``, the completing objective's form.

The same calls as :class:`jaxft.recipes.condense.inference.Condenser`, so ``python -m jaxft.recipes.condense
compress|generate --condenser DIR`` reads either kind of export. Only ``mode="continue"`` is offered: the
gist design's auto-encoding reads its span at positions (gists at 0, r, 2r, .., the flag at 0, the span from 1)
that the KV-cached sampler does not lay out, and it has no instruction objective.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxft import lora as lora_lib
from jaxft.checkpoint.hf import load_pretrained, save_pretrained
from jaxft.files import read_json, read_safetensors
from jaxft.recipes.condense import gist
from jaxft.recipes.condense.inference import Coverage

EXPORT_FILE, EXPORT_CONFIG, FORMAT = "gist.safetensors", "gist.json", "jaxft-gist"


def complete(model: gist.GistModel, trainable, frozen, gists, prompt_ids, max_new_tokens: int,
             stop_at_eos: bool = True) -> list[int]:
    """Greedy token ids from ``[gists [k, H]][LM flags][prompt_ids]`` through the frozen LLM (KV cache)."""
    from jaxft.models.decoder import embed
    from jaxft.sampling import SamplingConfig, generate

    cfg, dtype = model.llm, model.dtype
    parts = [jnp.asarray(gists, dtype), jnp.asarray(trainable["flags"]["lm"], dtype)]
    if len(prompt_ids):
        parts.append(embed(cfg, frozen["llm"], jnp.asarray(prompt_ids, jnp.int32), dtype))
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                              eos_token_ids=None if stop_at_eos else ())
    out = generate(cfg, frozen["llm"], None, sampling, inputs_embeds=jnp.concatenate(parts, axis=0)[None])
    return out.token_lists()[0]


def text_tokens(tokenizer, text: str, layout: gist.GistLayout) -> list[int]:
    """The reference's ``tokenizer(text, truncation=True, max_length=T)``: special tokens (BOS) included."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])[: layout.max_tokens]


@dataclasses.dataclass
class GistCondenser:
    """A trained gist design: the static model, its trees and the LLM's tokenizer."""

    model: gist.GistModel
    trainable: dict[str, Any]
    frozen: dict[str, Any]
    tokenizer: Any

    def compress(self, text: str, num_segments: int | None = None) -> np.ndarray:
        """The gists [k * n, hidden] (float32) of the text's first k spans (default: every span it fills)."""
        ex = gist.span_example(text_tokens(self.tokenizer, text, self.model.layout), self.model.layout)
        total = int(ex["mask"].any(-1).sum())
        k = total if num_segments is None else num_segments
        if not 1 <= k <= total:
            raise ValueError(f"compress: num_segments={num_segments} is not in [1, {total}] for this text")
        gists = gist.gist_features_jit(self.model, self.trainable, self.frozen, ex["ids"][None], ex["mask"][None])
        return np.asarray(jax.device_get(gists), np.float32)[0, :k].reshape(k * self.model.layout.num_gist_tokens, -1)

    def coverage(self, text: str) -> Coverage:
        """How much of ``text`` ``compress`` reads (its first ``max_tokens`` tokens), in spans."""
        layout = self.model.layout
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        read = min(len(enc["input_ids"]), layout.max_tokens)
        ends = [end for _, end in enc["offset_mapping"][:read]]
        characters = len(text) if read == len(enc["input_ids"]) else max(ends, default=0)
        return Coverage(characters=characters, total_characters=len(text),
                        segments=math.ceil(read / layout.span_length),
                        needed_segments=math.ceil(len(enc["input_ids"]) / layout.span_length),
                        max_segments=layout.max_spans)

    def generate(self, compressed, prompt: str = "", *, mode: str = "continue", max_new_tokens: int = 64,
                 stop_at_eos: bool = True) -> str:
        """Greedy text from ``[compressed][LM flags][prompt tokens]``."""
        if mode != "continue":
            raise ValueError(f"generate --mode {mode}: a gist-design export generates in the completing form "
                             "only ([gists][LM flag][prompt]); use --mode continue")
        compressed = np.asarray(compressed, np.float32)
        hidden = self.model.llm.hidden_size
        if compressed.ndim != 2 or compressed.shape[1] != hidden or compressed.shape[0] == 0:
            raise ValueError(f"generate: compressed must be [k, {hidden}] with k > 0, got {compressed.shape}")
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        tokens = complete(self.model, self.trainable, self.frozen, compressed, ids, max_new_tokens, stop_at_eos)
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def export_gist(directory: str | Path, model: gist.GistModel, trainable, frozen, tokenizer, source: str) -> Path:
    """The LoRA as a PEFT adapter, gist tokens and flags as safetensors, the layout as JSON, the tokenizer,
    and the LLM itself when it has no source to point at (random demo weights).
    ``python -m jaxft.recipes.condense.reference_formats`` turns it into the reference's files."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lora_lib.save_peft(directory / "adapter", model.llm, lora_lib.LoRA(trainable["lora"], model.lora_config),
                       base_model_name_or_path=source or None)
    tensors = {"gist_tokens": trainable["gist_tokens"], "flags.ae": trainable["flags"]["ae"],
               "flags.lm": trainable["flags"]["lm"]}
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, str(directory / EXPORT_FILE))
    if not source:
        save_pretrained(directory / "llm", model.llm, jax.tree.map(jnp.asarray, frozen["llm"]))
    layout = model.layout
    meta = {"format": FORMAT, "source": source, "bundled": not source, "dtype": jnp.dtype(model.dtype).name,
            "span_tokens": layout.span_length, "gist_tokens": layout.num_gist_tokens,
            "max_tokens": layout.max_tokens, "num_flags": layout.num_flags}
    (directory / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    tokenizer.save_pretrained(str(directory / "tokenizer"))
    return directory


def read_gist_condenser(directory: str | Path, llm_path: str | None = None, dtype=None) -> GistCondenser:
    """The ``GistCondenser`` written by ``export_gist``; ``llm_path`` replaces the LLM it records."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    file = directory / EXPORT_CONFIG
    meta = read_json(file, missing=f"not found; is {directory} a gist-design export?")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if llm_path is None:
        if not (meta.get("source") or meta.get("bundled")):
            raise ValueError(f"{file}: no LLM source recorded; pass --encoder")
        llm_path = meta["source"] or str(directory / "llm")
    dtype = jnp.dtype(dtype or meta.get("dtype", "float32"))
    cfg, params = load_pretrained(llm_path, dtype=dtype)
    adapters = lora_lib.load_peft(directory / "adapter", cfg)
    layout = gist.GistLayout(span_length=int(meta["span_tokens"]), num_gist_tokens=int(meta["gist_tokens"]),
                             max_tokens=int(meta["max_tokens"]), num_flags=int(meta.get("num_flags", 1)))
    tensors = read_safetensors(directory / EXPORT_FILE)
    n, h, f = layout.num_gist_tokens, cfg.hidden_size, layout.num_flags
    for name, shape in (("gist_tokens", (n, h)), ("flags.ae", (f, h)), ("flags.lm", (f, h))):
        if tuple(np.shape(tensors.get(name))) != shape:
            raise ValueError(f"{directory / EXPORT_FILE}: '{name}' has shape {np.shape(tensors.get(name))}, "
                             f"expected {shape} for the LLM {llm_path} and {file}")
    trainable = {"lora": adapters.params, "gist_tokens": jnp.asarray(tensors["gist_tokens"]),
                 "flags": {"ae": jnp.asarray(tensors["flags.ae"]), "lm": jnp.asarray(tensors["flags.lm"])}}
    model = gist.GistModel(llm=cfg, layout=layout, lora_config=adapters.config, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"), use_fast=True)
    return GistCondenser(model=model, trainable=trainable, frozen={"llm": params}, tokenizer=tokenizer)
