"""A trained embedllm on disk, and back; generation of the next turn of a conversation.

Directory layout::

    embedllm.json           Perceiver config (transformers keys), condenser, layout, LoRA, dtype, LLM source
    embedllm.safetensors    perceiver.* (transformers PerceiverModel names), input_projection.*,
                            compressor.*, projection.*, empty_history (float32)
    adapter/                the LLM's LoRA in PEFT format (peft.PeftModel loads it)
    tokenizer/
    llm/                    the base LLM as a HF checkpoint, only when it had no source to point at (random demo)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from jaxft import lora as lora_lib
from jaxft.files import flatten_tree, read_json, read_safetensors, unflatten_tree
from jaxft.recipes.embedllm.core import EmbedLLM, init_encoder, logits_jit, prefix_jit, split_encoder_params
from jaxft.recipes.embedllm.data import ExampleBuilder, Layout, split_turns
from jaxft.recipes.embedllm.model import CondenserConfig
from jaxft.recipes.embedllm.perceiver import PerceiverEncoderConfig, from_hf_state, to_hf_state
from jaxft.train.lm_export import export_finetuned

CONFIG_FILE = "embedllm.json"
WEIGHTS_FILE = "embedllm.safetensors"
FORMAT = "jaxft-embedllm"
VERSION = 2  # 2: the layout's turn budget (max_conversation_tokens) replaced max_turn_tokens


@dataclasses.dataclass
class EmbedChat:
    """A loaded model: prefixes, logits and replies for conversations (strings with turn separators)."""

    model: EmbedLLM
    layout: Layout
    trainable: dict
    frozen: dict
    tokenizer: Any
    notes: list[str] = dataclasses.field(default_factory=list)  # what the last ``examples`` call dropped or cut

    def examples(self, conversations: list[str]) -> dict[str, np.ndarray]:
        """History arrays and ``[prefix slot, last turn]`` rows (no EOS: the turn is still open).

        Every turn but the last is history; a conversation ending with the separator has an empty last turn.
        What the layout drops or cuts is said in ``self.notes`` (one line per conversation affected).
        """
        rows, self.notes = [], []
        for number, text in enumerate(conversations, 1):
            build = ExampleBuilder(self.tokenizer, self.layout)
            parts = text.split(self.layout.separator)
            history, _ = split_turns(self.layout.separator.join(parts[:-1]), self.layout.separator)
            last = parts[-1].strip()
            target = build.last_turn(last, append_eos=False)
            hist_ids, hist_mask = build.history(history, len(target))
            rows.append((hist_ids, hist_mask, [build.pad_id] + target))
            if build.stats.last_turns_cut:
                self.notes.append(f"conversation {number}: the last turn has {len(build.encode(last))} tokens; "
                                  f"kept its first {len(target)} (max_last_turn_tokens)")
            if build.stats.turns_dropped:
                self.notes.append(f"conversation {number}: dropped its {build.stats.turns_dropped} oldest history "
                                  f"turns (max_turns {self.layout.max_turns}, max_conversation_tokens "
                                  f"{self.layout.max_conversation_tokens})")
        width = max(len(r[2]) for r in rows)
        ids = np.full((len(rows), width), build.pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, (_, _, tokens) in enumerate(rows):  # left-padded, as generation wants
            ids[i, width - len(tokens):] = tokens
            mask[i, width - len(tokens):] = 1
        return {"input_ids": ids, "attention_mask": mask, "history_ids": np.stack([r[0] for r in rows]),
                "history_mask": np.stack([r[1] for r in rows])}

    def prefix(self, conversations: list[str]) -> np.ndarray:
        ex = self.examples(conversations)
        return np.asarray(prefix_jit(self.model, self.trainable, self.frozen, ex["history_ids"], ex["history_mask"]))

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of rows laid out as in training (``input_ids`` slot 0 is the prefix slot)."""
        return np.asarray(logits_jit(self.model, self.trainable, self.frozen, batch["input_ids"],
                                     batch["attention_mask"], batch["history_ids"], batch["history_mask"]))

    def reply(self, conversations: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
              seed: int = 0) -> list[str]:
        """The continuation of each conversation's last turn, generated from [prefix, last turn]."""
        from jaxft.recipes.embedllm.core import decoder_embeds
        from jaxft.sampling import SamplingConfig, generate

        ex = self.examples(conversations)
        prefix = prefix_jit(self.model, self.trainable, self.frozen, ex["history_ids"], ex["history_mask"])
        cfg = self.model.llm
        params = self.model.llm_params(self.trainable, self.frozen)
        # Left padding: each row's prefix slot is its first real slot, not column 0.
        first = np.argmax(ex["attention_mask"], axis=1)
        embeds = decoder_embeds(self.model, params, jnp.asarray(ex["input_ids"]), jnp.zeros_like(prefix))
        embeds = embeds.at[jnp.arange(len(first)), first].set(prefix.astype(embeds.dtype))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                  eos_token_ids=tuple(cfg.eos_token_ids), pad_token_id=int(pad))
        adapters = lora_lib.LoRA(self.trainable["lora"], self.model.lora_config)
        out = generate(cfg, self.frozen["llm"], sampling=sampling, inputs_embeds=embeds,
                       attention_mask=ex["attention_mask"], lora=adapters, seed=seed)
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in out.token_lists()]


def export_embedllm(directory: str | Path, chat: EmbedChat, *, llm_source: str = "", quantize: str = "none") -> Path:
    """Write ``chat``'s model to ``directory`` (see the module docstring)."""
    from jaxft.checkpoint.hf import save_pretrained

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = chat.model
    export_finetuned(directory, model.lm(), chat.trainable, chat.frozen, source=llm_source, tokenizer=chat.tokenizer,
                     tokenizer_in=("tokenizer",))  # adapter/ and tokenizer/
    encoder = model.encoder_params(chat.trainable, chat.frozen)
    tensors = to_hf_state(model.perceiver, encoder["perceiver"], prefix="perceiver.")
    tensors.update(flatten_tree({k: v for k, v in encoder.items() if k != "perceiver"}))
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    if not llm_source:
        save_pretrained(directory / "llm", model.llm, jax.tree.map(jnp.asarray, chat.frozen["llm"]))
    meta = {
        "format": FORMAT, "version": VERSION,
        "llm": {"source": llm_source, "bundled": not llm_source, "hidden_size": model.llm.hidden_size,
                "quantize": quantize},
        "perceiver": model.perceiver.to_hf(), "train_perceiver": model.train_perceiver,
        "condenser": dataclasses.asdict(model.condenser), "layout": dataclasses.asdict(chat.layout),
        "lora": dataclasses.asdict(model.lora_config), "dtype": jnp.dtype(model.dtype).name,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def _check_shapes(file: Path, got: dict, want: dict, path: str = "") -> None:
    for key, spec in want.items():
        name = f"{path}{key}"
        if key not in got:
            raise ValueError(f"{file}: tensor '{name}' is missing")
        if isinstance(spec, dict):
            _check_shapes(file, got[key], spec, name + ".")
        elif tuple(got[key].shape) != tuple(spec.shape):
            raise ValueError(f"{file}: tensor '{name}' has shape {tuple(got[key].shape)}, expected {spec.shape}")


def load_embedllm(directory: str | Path, *, llm_path: str | None = None, dtype=None) -> EmbedChat:
    """The ``EmbedChat`` written by ``export_embedllm``; raises naming what is missing or broken."""
    from transformers import AutoTokenizer

    from jaxft.checkpoint.hf import load_pretrained

    directory = Path(directory)
    file = directory / CONFIG_FILE
    meta = read_json(file, missing=f"not found; is {directory} an embedllm export?")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{file}: format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"expected {FORMAT!r} version {VERSION}")
    for key in ("llm", "perceiver", "condenser", "layout", "lora", "dtype", "train_perceiver"):
        if key not in meta:
            raise ValueError(f"{file}: key '{key}' is missing")
    dtype = jnp.dtype(dtype or meta["dtype"])
    source = llm_path or (str(directory / "llm") if meta["llm"]["bundled"] else meta["llm"]["source"])
    if not source:
        raise ValueError(f"{file}: no LLM source recorded; pass llm_path")
    cfg, llm_params = load_pretrained(source, dtype=dtype)
    if meta["llm"].get("quantize", "none") != "none":
        llm_params = lora_lib.quantize(llm_params, cfg, fmt=meta["llm"]["quantize"])
    adapters = lora_lib.load_peft(directory / "adapter", cfg)
    model = EmbedLLM(llm=cfg, perceiver=PerceiverEncoderConfig.from_hf(meta["perceiver"], str(file)),
                     condenser=CondenserConfig(**meta["condenser"]), lora_config=adapters.config,
                     train_perceiver=bool(meta["train_perceiver"]), dtype=dtype)
    weights = directory / WEIGHTS_FILE
    flat = read_safetensors(weights)
    perceiver = from_hf_state(model.perceiver, flat, str(weights), prefix="perceiver.")
    rest = unflatten_tree({k: v for k, v in flat.items() if not k.startswith("perceiver.")})
    template = jax.eval_shape(lambda: init_encoder(jax.random.PRNGKey(0), model))
    _check_shapes(weights, rest, {k: v for k, v in template.items() if k != "perceiver"})
    trainable, frozen = split_encoder_params(model, {**rest, "perceiver": perceiver})
    trainable["lora"] = adapters.params
    frozen["llm"] = llm_params
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    return EmbedChat(model=model, layout=Layout(**meta["layout"]), trainable=trainable, frozen=frozen,
                     tokenizer=tokenizer)
