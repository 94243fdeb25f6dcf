"""Load the tokenizer that belongs to a checkpoint: a directory, a GGUF file or a hub id.

Always returns a transformers tokenizer with its chat template, so chat data is
rendered exactly as with transformers. Tokenizers that jaxft converts itself
(``qwen_tokenizer``, ``mistral_tokenizer``) are saved once under the jaxft cache
and reloaded from there (``load_or_build``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from jaxft.assets import cache_dir

log = logging.getLogger(__name__)

# Any of these in a directory means transformers can build a tokenizer from it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "tekken.json")


class TokenizerError(ValueError):
    """No tokenizer can be loaded from the given source."""


def load_tokenizer(source: str | Path, *, revision: str | None = None, **kwargs):
    """A ``transformers`` tokenizer from a checkpoint directory, a ``.gguf`` file or a hub id.

    A directory without tokenizer files but with exactly one ``.gguf`` file uses
    the tokenizer embedded in that file (built without torch, see ``jaxft.tokenization.gguf``). Extra
    ``kwargs`` go to ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise TokenizerError(f"{path}: expected a checkpoint directory, a .gguf file or a hub id")
        return _from_gguf(path)
    if path.is_dir():
        if any((path / name).is_file() for name in TOKENIZER_FILES) or any(path.glob("*.tiktoken")):
            return AutoTokenizer.from_pretrained(str(path), **kwargs)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _from_gguf(ggufs[0])
        found = f"{len(ggufs)} .gguf files, pass one of them" if ggufs else "no .gguf file either"
        raise TokenizerError(f"{path}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) and {found}")
    text = str(source)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"tokenizer source '{text}' does not exist (and is not a hub id like org/name)")
    try:
        return AutoTokenizer.from_pretrained(text, revision=revision, **kwargs)
    except OSError as e:  # offline, unknown repo, no tokenizer files: name the id that failed
        raise TokenizerError(f"tokenizer '{text}' is not a local path and could not be loaded from the "
                             f"Hugging Face hub: {e}") from None


def _from_gguf(path: Path):
    from jaxft.tokenization.gguf import gguf_tokenizer

    try:
        tokenizer = gguf_tokenizer(path)
    except (ValueError, KeyError, OSError, IndexError) as e:  # not GGUF, or a vocabulary the converters refuse
        raise TokenizerError(f"{path}: cannot build a tokenizer from the GGUF metadata ({type(e).__name__}: {e})"
                             ) from None
    return tokenizer


def load_or_build(name: str, fingerprint: str, build: Callable[[], object]):
    """Reload tokenizer ``name`` from the jaxft cache, or ``build()`` and save it there.

    ``fingerprint`` must change whenever the built tokenizer would (inputs,
    versions, template); it names the cache entry, so stale entries are never
    read. Saving is atomic (a finished temp dir is renamed into place), and a
    cache that cannot be written only costs the rebuild next time.
    """
    from transformers import AutoTokenizer

    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    target = cache_dir() / "tokenizers" / f"{name}-{digest}"
    if (target / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(target))
        except Exception as e:  # a damaged entry: rebuild rather than fail
            log.warning("%s: cached tokenizer unreadable (%s); rebuilding", target, e)
            shutil.rmtree(target, ignore_errors=True)
    tokenizer = build()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-")
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as e:  # read-only home, or another process saved the same entry first
        if not target.is_dir():
            log.warning("could not cache tokenizer '%s' in %s: %s", name, target.parent, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
