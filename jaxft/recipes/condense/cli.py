"""Command line for an exported condenser (``python -m jaxft.recipes.condense``, or ``jaxft condense``).

    python -m jaxft.recipes.condense compress --condenser runs/condense/export --file article.txt --out states.npy
    python -m jaxft.recipes.condense generate --condenser runs/condense/export --compressed states.npy \\
        --prompt "In short," --max-new-tokens 64
    python -m jaxft.recipes.condense generate --condenser runs/condense/export --file article.txt --mode reconstruct
    python -m jaxft.recipes.condense generate --condenser runs/condense/export --compressed states.npy \
        --mode prompt --prompt "[INST] What is the article about? [/INST]"
    python -m jaxft.recipes.condense evaluate --config configs/condense.py:smol --condenser runs/condense/export

``--mode`` continue (the default) and reconstruct put the continuation or auto-encoding marker between the
states and the prompt; prompt puts none (``[states][prompt]``, the instruction objective's and the reference's
form). ``evaluate`` is ``python -m jaxft.recipes.condense.evaluate``. A gist-design export
(``condense.design=gist``) compresses into its spans' gists and generates in ``continue`` mode only
(``[gists][LM flag][prompt]``, its completing objective's form); its one LLM is ``--encoder``.

``--encoder``/``--decoder`` replace the base checkpoints recorded in the export
(e.g. local copies of hub models).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxft.errors import cli_boundary
from jaxft.files import read_document
from jaxft.recipes.condense.inference import MODES


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
    generate.add_argument("--prompt", default="", help="text the decoder reads after the marker (or, with "
                          "--mode prompt, right after the states)")
    generate.add_argument("--mode", choices=MODES, default="continue",
                          help="continue | reconstruct: [states][marker][prompt]; prompt: [states][prompt]")
    sub.add_parser("evaluate", help="condensed vs no-context losses on a config's validation records "
                   "(python -m jaxft.recipes.condense evaluate -h)", add_help=False)
    generate.add_argument("--max-new-tokens", type=int, default=128)
    return parser


def _read_text(args) -> str | None:
    if args.text is not None:
        text, origin = args.text, "--text"
    elif args.file is not None:
        text, origin = read_document(Path(args.file)), args.file
    else:
        return None
    if not text.strip():
        raise ValueError(f"{origin}: the text is empty or whitespace only")
    return text


def _compress(condenser, text: str, segments: int | None):
    """Compress, saying on stderr when the condenser cuts the text (it reads a fixed number of segments)."""
    coverage = condenser.coverage(text)
    if coverage.truncated:
        print(f"warning: {coverage}", file=sys.stderr, flush=True)
    if segments is not None and segments < coverage.segments:
        print(f"note: --segments {segments}: keeping {segments} of the {coverage.segments} segments read",
              file=sys.stderr, flush=True)
    return condenser.compress(text, num_segments=segments), coverage


def _load_states(path: str) -> np.ndarray:
    try:
        states = np.load(path, allow_pickle=False)
    except ValueError:  # numpy's message suggests allow_pickle, which would run code from the file
        raise ValueError(f"{path}: not a .npy array written by 'compress' (refusing pickled data)") from None
    if not isinstance(states, np.ndarray) or states.dtype.kind != "f":
        raise ValueError(f"{path}: not a .npy float array written by 'compress'")
    return states


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["evaluate"]:
        from jaxft.recipes.condense.evaluate import main as evaluate

        return evaluate(argv[1:])
    args = _parser().parse_args(argv)
    from jaxft.recipes.condense.inference import load_condenser

    text = _read_text(args)
    if args.command == "generate" and text is None and args.compressed is None:
        raise ValueError("generate: give --compressed, --text or --file")
    if args.command == "generate" and args.mode == "prompt" and not args.prompt:
        raise ValueError("generate --mode prompt: give --prompt (the decoder reads [states][prompt])")
    condenser = load_condenser(args.condenser, encoder_path=args.encoder, decoder_path=args.decoder)
    if args.command == "compress":
        states, coverage = _compress(condenser, text, args.segments)
        np.save(args.out, states)
        print(f"{args.out}: {states.shape[0]} condensed states of size {states.shape[1]} ({coverage})")
        return 0
    if text is not None:
        states, _ = _compress(condenser, text, args.segments)
    else:
        states = _load_states(args.compressed)
    print(condenser.generate(states, args.prompt, mode=args.mode, max_new_tokens=args.max_new_tokens))
    return 0
