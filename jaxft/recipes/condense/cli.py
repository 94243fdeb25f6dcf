"""Command line for an exported condenser (``python -m jaxft.recipes.condense``, or ``jaxft condense``).

    python -m jaxft.recipes.condense compress --condenser runs/condense/export --file article.txt --out states.npy
    python -m jaxft.recipes.condense generate --condenser runs/condense/export --compressed states.npy \\
        --prompt "In short," --max-new-tokens 64
    python -m jaxft.recipes.condense generate --condenser runs/condense/export --file article.txt --mode reconstruct

``--encoder``/``--decoder`` replace the base checkpoints recorded in the export
(e.g. local copies of hub models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from jaxft.errors import cli_boundary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxft.recipes.condense", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, text_required: bool):
        p.add_argument("--condenser", required=True, help="export directory of a trained condenser")
        p.add_argument("--encoder", default=None, help="encoder checkpoint (overrides the export's)")
        p.add_argument("--decoder", default=None, help="decoder checkpoint (overrides the export's)")
        group = p.add_mutually_exclusive_group(required=text_required)
        group.add_argument("--text", help="the text to compress")
        group.add_argument("--file", help="a UTF-8 file holding the text to compress")
        p.add_argument("--segments", type=int, default=None, help="compress only the first K segments")
        return group

    compress = sub.add_parser("compress", help="text -> condensed embeddings (.npy)")
    common(compress, text_required=True)
    compress.add_argument("--out", required=True, help="where to write the [k * n, hidden] float32 array (.npy)")

    generate = sub.add_parser("generate", help="condensed embeddings (+ prompt) -> text, greedy")
    source = common(generate, text_required=False)
    source.add_argument("--compressed", help="a .npy written by 'compress'")
    generate.add_argument("--prompt", default="", help="text the decoder reads after the marker")
    generate.add_argument("--mode", choices=("continue", "reconstruct"), default="continue")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    return parser


def _read_text(args) -> str | None:
    if args.text is not None:
        return args.text
    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        return path.read_text(encoding="utf-8")
    return None


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jaxft.recipes.condense.inference import load_condenser

    text = _read_text(args)
    if args.command == "generate" and text is None and args.compressed is None:
        raise ValueError("generate: give --compressed, --text or --file")
    condenser = load_condenser(args.condenser, encoder_path=args.encoder, decoder_path=args.decoder)
    if args.command == "compress":
        states = condenser.compress(text, num_segments=args.segments)
        np.save(args.out, states)
        print(f"{args.out}: {states.shape[0]} condensed states of size {states.shape[1]}")
        return 0
    if text is not None:
        states = condenser.compress(text, num_segments=args.segments)
    else:
        states = np.load(args.compressed, allow_pickle=False)
    print(condenser.generate(states, args.prompt, mode=args.mode, max_new_tokens=args.max_new_tokens))
    return 0
