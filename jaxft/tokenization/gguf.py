"""The tokenizer embedded in a ``.gguf`` file, built without PyTorch.

transformers builds GGUF tokenizers with its own converters, but reads the file's metadata with a
reader that imports torch, which the core install does not have. The metadata is read here with
the ``gguf`` package instead, in the same form (numeric arrays in full, string arrays only for the
vocabulary and the merges), and handed to the same converters, so the result is the tokenizer
``AutoTokenizer.from_pretrained(..., gguf_file=...)`` gives (checked in the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KEPT_STRING_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Every metadata key of a GGUF file: scalars, numeric arrays as lists, string arrays as lists for the
    vocabulary and merges and as their length otherwise (as transformers' reader returns them)."""
    from gguf import GGUFReader, GGUFValueType

    metadata = {}
    for key, field in GGUFReader(str(path)).fields.items():
        if key.startswith("GGUF."):  # the header, not metadata
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            element = field.types[-1]
            if element == GGUFValueType.STRING:
                metadata[key] = ([bytes(field.parts[i]).decode("utf-8") for i in field.data]
                                 if key in KEPT_STRING_ARRAYS else len(field.data))
            else:
                metadata[key] = [field.parts[i].tolist()[0] for i in field.data]
        elif kind == GGUFValueType.STRING:
            metadata[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            metadata[key] = field.parts[field.data[0]].tolist()[0]
    return metadata


def gguf_tokenizer(path: str | Path):
    """A fast ``transformers`` tokenizer (with the chat template) from the metadata of a GGUF file."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS,
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    metadata = read_metadata(path)
    if "general.architecture" not in metadata:
        raise ValueError(f"{path}: no general.architecture in the GGUF metadata")
    grouped = {
        group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in metadata}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in tokenizer_dict:
        raise ValueError(f"{path}: the GGUF metadata holds no tokenizer (tokenizer.ggml.tokens)")
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
    for name, key in _SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
