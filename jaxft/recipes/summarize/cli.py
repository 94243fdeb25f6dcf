"""Command line of the summarize recipe (``python -m jaxft.recipes.summarize``, or ``jaxft summarize``).

    python -m jaxft.recipes.summarize scaling --params 8.8e6 --tokens 2.3e8 [--total-params 5e8]
    python -m jaxft.recipes.summarize evaluate --export runs/summarize/export [--data val.jsonl] [--eval-samples 50]
    python -m jaxft.recipes.summarize evaluate --export runs/summarize/export --split test  # the dataset's test split
    python -m jaxft.recipes.summarize evaluate --export runs/summarize/export --base     # the untuned base model
    python -m jaxft.recipes.summarize generate --export runs/summarize/export --file article.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxft.errors import cli_boundary
from jaxft.files import read_document
from jaxft.recipes.summarize import scaling


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxft.recipes.summarize", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)

    s = verbs.add_parser("scaling", help="Chinchilla compute-optimal model size and tokens",
                         description="Give two of --params, --tokens, --compute (C = 6·N·D), or --compute alone.")
    s.add_argument("--params", type=_number, help="trainable parameters N (e.g. 8.8e6)")
    s.add_argument("--tokens", type=_number, help="training tokens D")
    s.add_argument("--compute", type=_number, help="compute budget C in FLOPs")
    s.add_argument("--total-params", type=_number, help="full model size, printed for reference")

    e = verbs.add_parser("evaluate", help="ROUGE of an export's summaries; writes evaluate_<split>.json")
    e.add_argument("--export", required=True, help="export directory of a summarize run")
    e.add_argument("--data", help="validation pairs: a .jsonl/.json/.csv file or directory, a datasets "
                                  "directory or a hub name (default: the run's own validation pairs)")
    e.add_argument("--split", help="split of --data (a datasets directory / hub dataset; default validation), "
                                   "or without --data of the run's own data.hf_dataset (e.g. test, as the "
                                   "reference scored); default: the run's validation pairs")
    e.add_argument("--hf-config", default="", help="configuration of a hub dataset (e.g. 3.0.0)")
    e.add_argument("--document-column", help="default: the run's data.document_column")
    e.add_argument("--summary-column", help="default: the run's data.summary_column")
    e.add_argument("--eval-samples", type=int, help="documents to summarise (default: the run's)")
    e.add_argument("--base", action="store_true", help="evaluate the base model without the adapter")
    e.add_argument("--greedy", action="store_true", help="greedy decoding instead of the run's setting")
    e.add_argument("--output", help="results file (default: <export>/evaluate_<split or data name>.json, "
                                    "..._base.json with --base; the export's evaluation_results.json, written "
                                    "at training, is never overwritten)")

    g = verbs.add_parser("generate", help="summarise a text with an export")
    g.add_argument("--export", required=True, help="export directory of a summarize run")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the document")
    source.add_argument("--file", help="a UTF-8 file holding the document")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of the run's setting")
    g.add_argument("--max-new-tokens", type=int, help="default: the run's summarize.max_new_tokens")
    g.add_argument("--seed", type=int, default=0)
    return p


def _scaling(args) -> int:
    analysis = scaling.analyze(params=args.params, tokens=args.tokens, compute=args.compute,
                               total_params=args.total_params)
    print(scaling.report(analysis))
    return 0


def _data_config(args, config):
    """The run's data section pointed at ``--data``: a data file, else a datasets directory or hub name
    (a directory is read by ``datasets``: saved with ``save_to_disk`` or holding per-split data files)."""
    data = config.data.copy_and_resolve_references()
    data.document_column = args.document_column or data.document_column
    data.summary_column = args.summary_column or data.summary_column
    data.max_records = 0
    if args.data is None:  # --split alone: another split of the run's own dataset
        if not data.hf_dataset or data.path:
            raise ValueError("--split without --data needs a run trained on data.hf_dataset (a hub dataset or "
                             "datasets directory); this run read data.path: give --data")
        data.path, data.hf_split = "", args.split
    elif Path(args.data).expanduser().is_file():
        data.path, data.hf_dataset = str(Path(args.data).expanduser()), ""
    else:
        data.path, data.hf_dataset, data.hf_config, data.hf_split = "", args.data, args.hf_config, \
            args.split or "validation"
    return data


def _evaluation_pairs(args, summarizer):
    from jaxft.loaders import load_records
    from jaxft.recipes.summarize.data import load_pairs
    from jaxft.recipes.summarize.recipe import eval_subset

    config = summarizer.config()
    count = args.eval_samples if args.eval_samples is not None else int(config.summarize.eval_samples)
    if count < 1:
        raise ValueError(f"--eval-samples must be positive, got {count}")
    if args.data is None and args.split is None:
        _, valid, _ = load_pairs(config, train=False)
    else:
        data = _data_config(args, config)
        records = load_records(data, (data.document_column, data.summary_column))
        valid = [{"document": r[data.document_column], "summary": r[data.summary_column]} for r in records]
    if not valid:
        raise ValueError("no validation pairs to evaluate")
    return eval_subset(valid, count, int(config.seed))


def _evaluate(args) -> int:
    from jaxft.recipes.summarize.evaluation import evaluate_summaries, summary_line, write_results
    from jaxft.recipes.summarize.recipe import RESULTS_FILE, decode_settings, load_export, summary_encoder

    summarizer = load_export(args.export)
    if args.base and summarizer.adapters is None:
        raise ValueError(f"{args.export}: a fully fine-tuned export has no separate base model to evaluate")
    config = summarizer.config()
    decode = decode_settings(config.summarize)
    if args.greedy:
        decode = type(decode)(**{**decode.__dict__, "greedy": True})
    pairs = _evaluation_pairs(args, summarizer)
    encoder = summary_encoder(summarizer)
    results = evaluate_summaries(summarizer.cfg, summarizer.params, summarizer.tokenizer, encoder,
                                 pairs, decode=decode, lora=None if args.base else summarizer.adapters,
                                 batch_size=int(config.summarize.eval_batch_size), seed=int(config.seed))
    results["model"] = "base" if args.base else "trained"
    output = Path(args.output) if args.output else default_output(args)
    if output.resolve() == (Path(args.export) / RESULTS_FILE).resolve():
        raise ValueError(f"--output {output}: that is the training run's results file; name another")
    write_results(output, results)
    print(summary_line(results))
    for i, sample in enumerate(results["samples"][:3], 1):
        print(f"\nSample {i}:\nTarget Summary: {sample['target_summary']}\n"
              f"Generated Summary: {sample['generated_summary']}")
    print(f"\nresults: {output}")
    return 0


def default_output(args) -> Path:
    """``<export>/evaluate_<what>[_base].json``: named after the split or data file scored, so runs on
    different data keep their own file and training's ``evaluation_results.json`` stays as written."""
    if args.data is not None and Path(args.data).expanduser().is_file():
        what = Path(args.data).stem
    else:
        what = args.split or "validation"
    return Path(args.export) / f"evaluate_{what}{'_base' if args.base else ''}.json"


def _generate(args) -> int:
    from jaxft.recipes.summarize.evaluation import generate_summaries
    from jaxft.recipes.summarize.recipe import decode_settings, load_export, summary_encoder

    if args.file is not None:
        text = read_document(Path(args.file))
    else:
        text = args.text
    if not text.strip():
        raise ValueError("the document is empty")
    summarizer = load_export(args.export)
    decode = decode_settings(summarizer.config().summarize)
    changes = {"greedy": True} if args.greedy else {}
    if args.max_new_tokens is not None:
        changes["max_new_tokens"] = args.max_new_tokens
    decode = type(decode)(**{**decode.__dict__, **changes})
    (summary,), _ = generate_summaries(summarizer.cfg, summarizer.params, summarizer.tokenizer,
                                       summary_encoder(summarizer), [text], decode=decode, lora=summarizer.adapters,
                                       batch_size=1, seed=args.seed)
    print(summary)
    return 0


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"scaling": _scaling, "evaluate": _evaluate, "generate": _generate}[args.verb](args)
