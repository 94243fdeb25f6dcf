"""python -m jaxft.recipes.summarize scaling | evaluate | generate."""

from __future__ import annotations

import argparse
import sys

from jaxft.recipes.summarize import scaling


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _scaling(args) -> int:
    analysis = scaling.analyze(params=args.params, tokens=args.tokens, compute=args.compute,
                               total_params=args.total_params)
    print(scaling.report(analysis))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxft.recipes.summarize",
                                description="Summarisation recipe tools.")
    verbs = p.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("scaling", help="Chinchilla compute-optimal model size and tokens",
                         description="Give two of --params, --tokens, --compute (C = 6·N·D), or --compute alone.")
    s.add_argument("--params", type=_number, help="trainable parameters N (e.g. 8.8e6)")
    s.add_argument("--tokens", type=_number, help="training tokens D")
    s.add_argument("--compute", type=_number, help="compute budget C in FLOPs")
    s.add_argument("--total-params", type=_number, help="full model size, printed for reference")
    s.set_defaults(run=_scaling)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.run(args)
