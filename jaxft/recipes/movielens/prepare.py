"""MovieLens ratings -> "will this user like this movie?" records, split per user in time order.

Same semantics as the reference's ``prepare_movielens.py``: each user's ratings in timestamp order;
users with no more than ``history_len`` ratings are skipped; every later rating is a candidate
whose history is the ``history_len`` ratings just before it; the label is ``Yes`` when the rating
reaches the threshold. Of a user's ``L`` candidates the last ``max(1, floor(test_ratio * L))`` go
to test, the ``max(1, floor(val_ratio * L))`` before them to validation, the rest to train. All
samples are shuffled once with Python's ``random`` seeded by ``seed`` (the reference's generator,
so the same inputs give the same order), and ``max_eval`` keeps the first validation records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from itertools import groupby
from pathlib import Path

from jaxft.data.records import DataError
from jaxft.recipes.movielens import prompts
from jaxft.recipes.movielens.sources import Rating, read_movielens

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    history_len: int = 15
    rating_threshold: float = 4.0
    val_ratio: float = 0.05
    test_ratio: float = 0.1
    max_eval: int | None = None
    max_per_user: int | None = None
    seed: int = 13
    on_error: str = "raise"
    system_prompt: str = prompts.SYSTEM_PROMPT
    instruction: str = prompts.INSTRUCTION

    def check(self) -> None:
        if self.history_len < 1:
            raise ValueError(f"--history-len must be at least 1, got {self.history_len}")
        for name, value in (("--val-ratio", self.val_ratio), ("--test-ratio", self.test_ratio)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name, value in (("--max-eval", self.max_eval), ("--max-per-user", self.max_per_user)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclasses.dataclass(frozen=True)
class Sample:
    split: str
    user_id: int
    history_titles: tuple[str, ...]
    candidate_title: str
    label: str
    rating: float
    timestamp: int


def split_bounds(length: int, val_ratio: float, test_ratio: float) -> tuple[int, int]:
    """(validation start, test start) among a user's ``length`` candidates."""
    test_start = length - max(1, math.floor(length * test_ratio))
    val_start = max(test_start - max(1, math.floor(length * val_ratio)), 0)
    return val_start, test_start


def build_samples(ratings: list[Rating], titles: dict[int, str], opts: PrepareOptions) -> list[Sample]:
    """Samples in user order, each user's in time order (before the shuffle)."""
    # A stable sort: ratings with equal timestamps keep their file order.
    ordered = sorted(ratings, key=lambda r: (r.user_id, r.timestamp))
    samples = []
    for user_id, events in groupby(ordered, key=lambda r: r.user_id):
        events = list(events)
        if len(events) <= opts.history_len:
            continue
        candidates = events[opts.history_len:]
        if opts.max_per_user:
            candidates = candidates[:opts.max_per_user]
        val_start, test_start = split_bounds(len(candidates), opts.val_ratio, opts.test_ratio)
        for index, current in enumerate(candidates):
            history = events[index:index + opts.history_len]
            split = "test" if index >= test_start else "val" if index >= val_start else "train"
            samples.append(Sample(
                split=split, user_id=user_id,
                history_titles=tuple(prompts.history_line(k, titles[e.movie_id], e.rating)
                                     for k, e in enumerate(history, start=1)),
                candidate_title=titles[current.movie_id],
                label=prompts.label_for(current.rating, opts.rating_threshold),
                rating=current.rating, timestamp=current.timestamp))
    return samples


@dataclasses.dataclass
class Prepared:
    train: list[dict]
    eval: list[dict]
    test: list[dict]
    meta: dict


def prepare(source: Path, opts: PrepareOptions) -> Prepared:
    opts.check()
    ratings, titles, report = read_movielens(Path(source), opts.on_error)
    samples = build_samples(ratings, titles, opts)
    if not samples:
        raise DataError(f"{source}: no user has more than --history-len={opts.history_len} ratings")
    random.Random(opts.seed).shuffle(samples)

    def records(split):
        return [prompts.record(s.history_titles, s.candidate_title, s.label, opts.history_len,
                               opts.instruction, opts.system_prompt) for s in samples if s.split == split]

    train, val = records("train"), records("val")
    test = [{"user_id": s.user_id, "history_titles": list(s.history_titles), "candidate_title": s.candidate_title,
             "label": s.label, "rating": s.rating, "timestamp": s.timestamp} for s in samples if s.split == "test"]
    empty = [name for name, part in (("train", train), ("validation", val), ("test", test)) if not part]
    if empty:
        raise DataError(f"{source}: the {' and '.join(empty)} split(s) came out empty; lower --history-len or raise "
                        "--val-ratio/--test-ratio, or give more ratings per user")
    if opts.max_eval and len(val) > opts.max_eval:
        val = val[:opts.max_eval]
    meta = {
        "arguments": {k: v for k, v in dataclasses.asdict(opts).items()},
        "counts": {"train": len(train), "eval": len(val), "test": len(test)},
        "labels": {"train": _balance(r["output"] for r in train), "eval": _balance(r["output"] for r in val),
                   "test": _balance(r["label"] for r in test)},
        "source": {"directory": str(source), "layout": report.layout, "sha256": report.files,
                   "skipped_rows": report.skipped, "first_skipped": report.first_errors},
        "ratings": len(ratings), "users": len({r.user_id for r in ratings}), "movies": len(titles),
    }
    return Prepared(train, val, test, meta)


def _balance(labels) -> dict[str, int]:
    counts = Counter(labels)
    return {prompts.POSITIVE: counts.get(prompts.POSITIVE, 0), prompts.NEGATIVE: counts.get(prompts.NEGATIVE, 0)}


def write_prepared(prepared: Prepared, output_dir: Path) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, data in (("train.json", prepared.train), ("eval.json", prepared.eval)):
        (output_dir / name).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    with open(output_dir / "test_raw.jsonl", "w", encoding="utf-8") as f:
        for row in prepared.test:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (output_dir / "meta.json").write_text(json.dumps(prepared.meta, ensure_ascii=False, indent=2), encoding="utf-8")
