"""Use a condenser: ``compress(text)`` -> condensed embeddings, ``generate(compressed, prompt)``.

    from jaxft.recipes.condense.inference import load_condenser
    condenser = load_condenser("runs/condense/export")          # or encoder_path=/decoder_path= overrides
    states = condenser.compress(long_text)                      # [segments * n, decoder_hidden] float32
    print(condenser.generate(states, mode="reconstruct"))        # the text back, greedily decoded
    print(condenser.generate(states, prompt="In short,"))        # a continuation conditioned on the text
    print(condenser.generate(states, prompt="[INST] Who wrote it? [/INST]", mode="prompt"))  # [states][prompt]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxft.models.decoder import embed
from jaxft.recipes.condense import model as model_lib
from jaxft.recipes.condense.data import ExampleBuilder, Layout, context_end

Mode = Literal["continue", "reconstruct", "prompt"]
# The marker each mode puts between the states and the prompt; "prompt" (the instruction objective's
# form, and the reference's) puts none: [states][prompt tokens].
_MARKERS = {"continue": "cont", "reconstruct": "ae", "prompt": None}
MODES = tuple(_MARKERS)


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How much of a text a condenser reads: it cuts texts to its layout's budget."""

    characters: int  # characters read (the text is cut at a token end)
    total_characters: int
    segments: int  # segments the characters read fill
    needed_segments: int  # segments the whole text would fill
    max_segments: int

    @property
    def truncated(self) -> bool:
        return self.characters < self.total_characters

    def __str__(self) -> str:
        text = f"read {self.characters:,} of {self.total_characters:,} characters ({self.segments} segments)"
        if self.truncated:
            parts = math.ceil(self.needed_segments / self.max_segments)
            text += (f"; the condenser takes at most {self.max_segments} segments and the whole text would need "
                     f"{self.needed_segments}: the rest was cut (split the text into {parts} parts to read all of it)")
        return text


@dataclasses.dataclass
class Condenser:
    """A trained condenser: the static model, its trees and both tokenizers."""

    model: model_lib.CondenseModel
    layout: Layout
    trainable: dict[str, Any]
    frozen: dict[str, Any]
    encoder_tokenizer: Any
    decoder_tokenizer: Any

    @functools.cached_property
    def builder(self) -> ExampleBuilder:
        return ExampleBuilder(self.encoder_tokenizer, self.decoder_tokenizer, self.layout)

    def compress(self, text: str, num_segments: int | None = None) -> np.ndarray:
        """Condensed embeddings [k * n, decoder_hidden] (float32) of the text's first k segments.

        ``k`` defaults to all segments the text fills (after cutting it to the
        configured maximum length); the states of one segment do not depend on
        the others, so a prefix of segments is a prefix of the output.
        """
        return self._compress(self.builder.example(self.builder.text_tokens(text)), num_segments)

    def _compress(self, example, num_segments: int | None = None) -> np.ndarray:
        total = int(example["num_segments"])
        k = total if num_segments is None else num_segments
        if not 1 <= k <= total:
            raise ValueError(f"compress: num_segments={num_segments} is not in [1, {total}] for this text")
        states = model_lib.condense_jit(self.model, self.trainable, self.frozen, example["enc_ids"][None],
                                        example["enc_mask"][None])
        states = np.asarray(jax.device_get(states), np.float32)[0, :k]  # [k, n, H]
        return states.reshape(k * self.model.num_condense_tokens, -1)

    def coverage(self, text: str) -> Coverage:
        """How much of ``text`` ``compress`` reads, and the segments the whole text would need."""
        fitted, enc_ids, enc_off, _, _ = self.builder.fit(text)
        total_tokens = len(self.encoder_tokenizer(text, add_special_tokens=False)["input_ids"])
        length = self.layout.segment_length
        read = min(len(enc_ids), self.layout.max_tokens)
        return Coverage(characters=context_end(fitted, enc_ids, enc_off, self.layout.max_tokens),
                        total_characters=len(text),
                        segments=math.ceil(read / length), needed_segments=math.ceil(total_tokens / length),
                        max_segments=self.layout.max_segments)

    def generate(self, compressed, prompt: str = "", *, mode: Mode = "continue", max_new_tokens: int = 64,
                 stop_at_eos: bool = True) -> str:
        """Greedy text from ``[compressed][marker][prompt tokens]`` with the decoder (KV cache).

        ``mode="reconstruct"`` uses the auto-encoding marker (the decoder
        reproduces the compressed text); ``"continue"`` the continuation marker;
        ``"prompt"`` no marker: ``[compressed][prompt tokens]``, as the instruction
        objective trains it (the prompt's last ``max_prompt_tokens`` tokens, as in training).
        """
        from jaxft.sampling import SamplingConfig, generate

        if mode not in _MARKERS:
            raise ValueError(f"generate: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "prompt" and not prompt:
            raise ValueError("generate: mode 'prompt' needs a prompt (the decoder reads [states][prompt])")
        compressed = np.asarray(compressed, np.float32)
        hidden = self.model.decoder.hidden_size
        if compressed.ndim != 2 or compressed.shape[1] != hidden or compressed.shape[0] == 0:
            raise ValueError(f"generate: compressed must be [k, {hidden}] with k > 0, got {compressed.shape}")
        dtype = self.model.dtype
        dec_params = self.model.decoder_params(self.trainable, self.frozen)
        parts = [jnp.asarray(compressed, dtype)]
        if _MARKERS[mode] is not None:
            parts.append(jnp.asarray(self.trainable["markers"][_MARKERS[mode]], dtype)[None])
        ids = self.decoder_tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        if mode == "prompt" and self.layout.max_prompt_tokens:
            ids = ids[-self.layout.max_prompt_tokens:]
        if ids:
            parts.append(embed(self.model.decoder, dec_params, jnp.asarray(ids, jnp.int32), dtype))
        embeds = jnp.concatenate(parts, axis=0)[None]
        cfg = self.model.decoder
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0,
                                  eos_token_ids=tuple(cfg.eos_token_ids) if stop_at_eos else (),
                                  pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0)
        out = generate(cfg, dec_params, None, sampling, inputs_embeds=embeds)
        tokens = out.token_lists()[0]
        return self.decoder_tokenizer.decode(tokens, skip_special_tokens=True)

    def samples(self, text: str, max_new_tokens: int = 64) -> dict[str, str]:
        """The text as the condenser sees it, its reconstruction, and a continuation from all but
        the last segment next to the real rest of the text."""
        fit = self.builder.fit(text)  # the only tokenizing of the text here
        fitted, enc_ids, enc_off, _, _ = fit
        example = self.builder.example(self.builder.text_tokens(text, fit))
        m = int(example["num_segments"])
        states = self._compress(example)
        n_dec = int(example["dec_mask"].sum())
        out = {"original": fitted,
               "reconstruction": self.generate(states, mode="reconstruct", max_new_tokens=min(n_dec, max_new_tokens),
                                               stop_at_eos=False)}
        end = context_end(fitted, enc_ids, enc_off, self.layout.max_tokens)
        if end < len(fitted):  # the text goes on after the condensed context: continue from all of it
            out["continuation"] = self.generate(states, mode="continue", max_new_tokens=max_new_tokens)
            out["continuation_reference"] = fitted[end:]
        elif m > 1:
            seen = (m - 1) * self.model.num_condense_tokens
            cut = int(enc_off[(m - 1) * self.layout.segment_length, 0])
            out["continuation"] = self.generate(states[:seen], mode="continue", max_new_tokens=max_new_tokens)
            out["continuation_reference"] = fitted[cut:]
        return out

    def instruction_samples(self, context: str, prompt: str, completion: str, max_new_tokens: int = 64
                            ) -> dict[str, str]:
        """The condensed context read with the prompt (``mode="prompt"``), next to the expected completion."""
        fit = self.builder.fit(context)
        states = self._compress(self.builder.example(self.builder.text_tokens(context, fit)))
        return {"context": fit[0], "prompt": prompt,
                "completion": self.generate(states, prompt, mode="prompt", max_new_tokens=max_new_tokens),
                "expected_completion": completion}


def load_condenser(directory: str | Path, encoder_path: str | None = None, decoder_path: str | None = None,
                   dtype=None, quantize: bool = True):
    """A ``Condenser`` from an export directory; the base LLMs come from the paths recorded at
    export time (or bundled in the directory) unless ``encoder_path``/``decoder_path`` override them.
    ``quantize=False`` keeps the bases unquantized even if training used NF4/int8. A gist-design export
    (``condense.design=gist``) gives a ``gist_inference.GistCondenser`` (one LLM: ``encoder_path``)."""
    from jaxft.recipes.condense.export import read_condenser
    from jaxft.recipes.condense.gist_inference import EXPORT_CONFIG, read_gist_condenser

    if (Path(directory) / EXPORT_CONFIG).is_file():
        if decoder_path and decoder_path != encoder_path:
            raise ValueError(f"{directory}: a gist-design export has one LLM; give it as --encoder, not --decoder")
        return read_gist_condenser(directory, llm_path=encoder_path or decoder_path, dtype=dtype)

    return read_condenser(directory, encoder_path=encoder_path, decoder_path=decoder_path, dtype=dtype,
                          quantize=quantize)
