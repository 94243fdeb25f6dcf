"""The offline demo's data: a generated MovieLens folder (users with genre tastes), run through the
real ``prepare``, and a BPE tokenizer trained on the prepared records.

Each movie belongs to one genre, and its title carries one of its genre's words ("The Silent
Planet (1987)" is science fiction). Each user likes two of the four genres. A rating is about 4.1
for a liked genre and 2.9 otherwise, shifted by the user's generosity (sd 0.9) and the movie's
quality (sd 0.8), plus noise (sd 0.5), then rounded to half stars. So a candidate's label is
partly readable from the history (the user's ratings of earlier movies of its genre, and how
generous they are) and partly from the candidate itself (good movies are liked more often).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from jaxft.assets import cache_dir

log = logging.getLogger("jaxft")

GENRES = {
    "Sci-Fi": ("Planet", "Robot", "Galaxy", "Rocket"),
    "Horror": ("Ghost", "Grave", "Curse", "Shadow"),
    "Romance": ("Kiss", "Heart", "Wedding", "Letter"),
    "Western": ("Saloon", "Canyon", "Sheriff", "Outlaw"),
}
ADJECTIVES = ("Silent", "Last", "Golden", "Broken")
_GENERATOR_VERSION = 3


def write_demo_movielens(directory: Path, *, users: int = 160, ratings_per_user: int = 30, seed: int = 0) -> Path:
    """``ratings.csv`` + ``movies.csv`` (ml-latest-small layout) in ``directory``."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    movies = []  # (id, title, genre)
    for genre, nouns in GENRES.items():
        for noun in nouns:
            for adjective in ADJECTIVES[:3]:
                movie_id = len(movies) + 1
                movies.append((movie_id, f"The {adjective} {noun} ({1950 + int(rng.integers(0, 50))})", genre))
    quality = rng.normal(0.0, 0.8, size=len(movies))
    genre_names = list(GENRES)
    lines = ["userId,movieId,rating,timestamp"]
    for user in range(1, users + 1):
        liked = set(rng.choice(genre_names, size=2, replace=False))
        generosity = rng.normal(0.0, 0.9)
        seen = rng.choice(len(movies), size=ratings_per_user, replace=False)
        clock = int(rng.integers(9 * 10**8, 10**9))
        for index in seen:
            movie_id, _, genre = movies[index]
            mean = (4.1 if genre in liked else 2.9) + generosity + quality[index]
            rating = float(np.clip(np.round((mean + rng.normal(0.0, 0.5)) * 2) / 2, 0.5, 5.0))
            clock += int(rng.integers(60, 86_400))
            lines.append(f"{user},{movie_id},{rating:.1f},{clock}")
    (directory / "ratings.csv").write_text("\n".join(lines) + "\n")
    (directory / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{m},{t},{g}\n" for m, t, g in movies))
    return directory


def demo_data_dir(history_len: int, seed: int, root: Path | None = None) -> Path:
    """Generated MovieLens files prepared into train.json/eval.json/test_raw.jsonl (made once, cached)."""
    from jaxft.recipes.movielens.prepare import PrepareOptions, prepare, write_prepared

    root = Path(root) if root is not None else cache_dir() / "movielens"
    tag = hashlib.sha256(json.dumps([_GENERATOR_VERSION, history_len, seed]).encode()).hexdigest()[:12]
    out = root / f"demo-{tag}"
    if (out / "meta.json").is_file():
        return out
    source = write_demo_movielens(root / f"demo-source-{tag}", seed=seed)
    prepared = prepare(source, PrepareOptions(history_len=history_len))
    tmp = root / f".demo-{tag}-{np.random.default_rng().integers(1 << 30)}"
    write_prepared(prepared, tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process prepared it first
        if not (out / "meta.json").is_file():
            raise
    log.info("demo data: %s (%s)", out, prepared.meta["counts"])
    return out


def train_demo_tokenizer(data_dir: Path, vocab_size: int, target: Path) -> Path:
    """A byte-level BPE tokenizer trained on the prepared records, saved as a transformers
    tokenizer directory with ChatML's markers as special tokens and a ChatML chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from jaxft.recipes.movielens.encoding import CHATML_TEMPLATE

    target = Path(target)
    if (target / "tokenizer.json").is_file():
        return target
    texts = []
    for name in ("train.json", "eval.json"):
        for rec in json.loads((Path(data_dir) / name).read_text()):
            texts += [rec["system"], rec["instruction"], rec["input"], rec["output"]]
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    # Pieces never cross a line break, a history number or a rating bracket, so with enough merges
    # each title, each rating and each constant sentence is one token (item-id-like tokens): the
    # prompt is a few dozen tokens and a tiny model can learn the task in minutes.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n|\d+\. | \(rating ≈ [0-9.]+\)"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                      bos_token=None)
    wrapped.chat_template = CHATML_TEMPLATE
    tmp = target.with_name(f".{target.name}-{np.random.default_rng().integers(1 << 30)}")
    wrapped.save_pretrained(str(tmp))
    try:
        tmp.rename(target)
    except OSError:
        if not (target / "tokenizer.json").is_file():
            raise
    return target
