"""``python -m jaxft.recipes.movielens prepare | check-seq-len | compare``.

    python -m jaxft.recipes.movielens prepare --source DIR --output-dir data/movielens
    python -m jaxft.recipes.movielens prepare --download ml-latest-small --output-dir data/movielens   # or ml-100k
    python -m jaxft.recipes.movielens check-seq-len --config configs/movielens.py:seed
    python -m jaxft.recipes.movielens compare --export runs/movielens/export --data data/movielens/test_raw.jsonl
    python -m jaxft.recipes.movielens infer --export runs/movielens/export --data data/movielens/test_raw.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxft.recipes.movielens import prompts
from jaxft.recipes.movielens.download import ARCHIVES, DEFAULT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxft.recipes.movielens", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="MovieLens files -> train.json, eval.json, test_raw.jsonl, meta.json")
    where = prep.add_mutually_exclusive_group()
    where.add_argument("--source", type=Path, help="folder with ratings.csv+movies.csv, ratings.dat+movies.dat "
                                                   "or u.data+u.item (neither flag: --download ml-latest-small, "
                                                   "as the reference)")
    where.add_argument("--download", nargs="?", const=DEFAULT, choices=tuple(ARCHIVES),
                       help=f"fetch this GroupLens archive once into the cache (online; default {DEFAULT})")
    prep.add_argument("--output-dir", type=Path, required=True)
    prep.add_argument("--history-len", type=int, default=15)
    prep.add_argument("--rating-threshold", type=float, default=4.0)
    prep.add_argument("--val-ratio", type=float, default=0.05)
    prep.add_argument("--test-ratio", type=float, default=0.1)
    prep.add_argument("--max-eval", type=int, default=None, help="keep at most N validation records")
    prep.add_argument("--max-per-user", type=int, default=None, help="keep each user's first N candidates")
    prep.add_argument("--seed", type=int, default=13)
    prep.add_argument("--system-prompt", default=prompts.SYSTEM_PROMPT, help="the system prompt of every record")
    prep.add_argument("--instruction", default=prompts.INSTRUCTION, help="the instruction of every record")
    prep.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                      help="bad rows: stop at the first (default) or skip and count them")

    seq = sub.add_parser("check-seq-len", help="token (or character) lengths of the training records")
    seq.add_argument("--config", required=True, help="configs/movielens.py[:preset]")
    seq.add_argument("--data-dir", type=Path, default=None, help="prepared data (default: the config's data.dir)")
    seq.add_argument("--percentiles", default="50,90,95,99,100")
    seq.add_argument("--char-only", action="store_true", help="count characters; no tokenizer")
    seq.add_argument("--max-samples", type=int, default=None)

    cmp_ = sub.add_parser("compare", help="base model vs fine-tuned export on test_raw.jsonl")
    cmp_.add_argument("--export", type=Path, required=True, help="the export directory of a training run")
    cmp_.add_argument("--data", type=Path, required=True, help="test_raw.jsonl written by prepare")
    cmp_.add_argument("--limit", type=int, default=None, help="score the first N records only")
    cmp_.add_argument("--output", type=Path, default=None, help="write one JSON line per record here")
    cmp_.add_argument("--batch-size", type=int, default=8)
    cmp_.add_argument("--examples", type=int, default=5, help="example rows to print")
    cmp_.add_argument("--base-model", default=None, help="a local copy of the export's base model (dir or .gguf)")

    inf = sub.add_parser("infer", help="answers by generation (the reference's infer_lora.py), parsed as Yes/No")
    inf.add_argument("--export", type=Path, required=True, help="the export directory of a training run")
    what = inf.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", type=Path, help="test_raw.jsonl written by prepare: accuracy/F1 of the answers")
    what.add_argument("--prompt", help="one user input (history, candidate, question), as infer_lora.py's")
    inf.add_argument("--limit", type=int, default=None, help="the first N records only")
    inf.add_argument("--base", action="store_true", help="also generate with the base model alone")
    inf.add_argument("--max-new-tokens", type=int, default=64)
    inf.add_argument("--temperature", type=float, default=0.7)
    inf.add_argument("--top-p", type=float, default=0.9)
    inf.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    inf.add_argument("--seed", type=int, default=0)
    inf.add_argument("--batch-size", type=int, default=8)
    inf.add_argument("--examples", type=int, default=5, help="example rows to print")
    inf.add_argument("--base-model", default=None, help="a local copy of the export's base model (dir or .gguf)")
    return parser


def _infer(args) -> int:
    from jaxft.recipes.movielens.infer import Decoding, format_infer, infer

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    decoding = Decoding(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        greedy=args.greedy)
    result = infer(args.export, data=args.data, prompt=args.prompt, limit=args.limit, base=args.base,
                   decoding=decoding, batch_size=args.batch_size, seed=args.seed, base_model=args.base_model)
    print(format_infer(result, examples=args.examples))
    return 0


def _prepare(args) -> int:
    from jaxft.recipes.movielens.prepare import PrepareOptions, prepare, write_prepared

    source = args.source
    if source is not None and not source.is_dir() and str(source) in ARCHIVES:
        raise ValueError(f"--source {source}: not a directory; to fetch that archive, use --download {source}")
    if source is None:
        from jaxft.recipes.movielens.download import download

        source = download(args.download or DEFAULT)
    opts = PrepareOptions(history_len=args.history_len, rating_threshold=args.rating_threshold,
                          val_ratio=args.val_ratio, test_ratio=args.test_ratio, max_eval=args.max_eval,
                          max_per_user=args.max_per_user, seed=args.seed, on_error=args.on_error,
                          system_prompt=args.system_prompt, instruction=args.instruction)
    prepared = prepare(source, opts)
    write_prepared(prepared, args.output_dir)
    meta = prepared.meta
    skipped = sum(meta["source"]["skipped_rows"].values())
    print(json.dumps({**meta["counts"], "labels": meta["labels"], "skipped_rows": skipped,
                      "output_dir": str(args.output_dir)}, indent=2))
    return 0


def _check_seq_len(args) -> int:
    from jaxft.recipes.movielens.seqlen import check_seq_len

    percentiles = [int(p) for p in args.percentiles.split(",") if p.strip()]
    print(check_seq_len(args.config, data_dir=args.data_dir, percentiles=percentiles, char_only=args.char_only,
                        max_samples=args.max_samples))
    return 0


def _compare(args) -> int:
    from jaxft.recipes.movielens.compare import compare, format_report

    result = compare(args.export, args.data, limit=args.limit, output=args.output, batch_size=args.batch_size,
                     base_model=args.base_model)
    print(format_report(result, examples=args.examples))
    return 0


COMMANDS = {"prepare": _prepare, "check-seq-len": _check_seq_len, "compare": _compare, "infer": _infer}


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Known failures (bad files, rows, paths) are one ``error:`` line and exit code 2."""
    from jaxft.errors import cli_boundary

    return cli_boundary(_main)(argv)
