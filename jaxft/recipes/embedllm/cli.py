"""``python -m jaxft.recipes.embedllm chat --export DIR --conversation FILE_OR_TEXT``;
``python -m jaxft.recipes.embedllm convert-perceiver --checkpoint DIR --out DIR`` (.bin -> safetensors, once);
``python -m jaxft.recipes.embedllm import-reference --checkpoint DIR --out DIR [--llm PATH] [--perceiver ID]``.

The conversation's turns but the last are read by the Perceiver into the prefix; the LLM continues
the last turn from [prefix, last turn]. End the text with the separator to have it write a whole
new turn. A ``.json``/``.jsonl`` file may hold several conversations (column detected as in training);
any other file is one conversation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jaxft.recipes.embedllm",
                                     description="Chat with an embedllm export.")
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="generate the next turn of a conversation")
    chat.add_argument("--export", required=True, help="the export directory (<workdir>/export)")
    chat.add_argument("--conversation", required=True,
                      help="a conversation ('t1<|turn|>t2<|turn|>t3'), or a .json/.jsonl/.txt file of them")
    chat.add_argument("--text-column", default="", help="column of a .json/.jsonl file (default: detected)")
    chat.add_argument("--llm", default=None, help="base LLM to use instead of the one the export records")
    chat.add_argument("--max-new-tokens", type=int, default=64)
    chat.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    chat.add_argument("--seed", type=int, default=0)
    conv = sub.add_parser("convert-perceiver", help="rewrite a PyTorch (.bin) Perceiver checkpoint as safetensors")
    conv.add_argument("--checkpoint", required=True, help="a Perceiver checkpoint directory (config.json + weights)")
    conv.add_argument("--out", required=True, help="where to write config.json + model.safetensors")
    imp = sub.add_parser("import-reference", help="a checkpoint of the reference's train.py as an embedllm export")
    imp.add_argument("--checkpoint", required=True,
                     help="its checkpoint-N/ or final/ (additional_components.pt, PEFT adapter, tokenizer)")
    imp.add_argument("--out", required=True, help="the export directory to write")
    imp.add_argument("--llm", default="", help="the base LLM (default: the adapter's base_model_name_or_path)")
    imp.add_argument("--perceiver", default="deepmind/multimodal-perceiver",
                     help="the Perceiver whose config.json gives the shape (default: the reference's)")
    return parser


def _import_reference(args) -> int:
    from jaxft.recipes.embedllm.reference import import_reference

    print(import_reference(args.checkpoint, args.out, llm=args.llm, perceiver=args.perceiver))
    return 0


def _convert_perceiver(args) -> int:
    from jaxft.recipes.embedllm.perceiver import load_perceiver, save_perceiver

    cfg, params = load_perceiver(args.checkpoint)
    print(save_perceiver(args.out, cfg, params))
    return 0


def conversations_of(spec: str, separator: str, text_column: str = "") -> list[str]:
    from jaxft.recipes.embedllm.data import read_local

    path = Path(spec).expanduser()
    if path.suffix in (".json", ".jsonl", ".txt") and not path.is_file():
        raise FileNotFoundError(f"--conversation: no such file: {path}")
    if path.is_file():
        if path.suffix in (".json", ".jsonl"):
            return read_local(path, text_column, separator)
        return [path.read_text(encoding="utf-8")]
    return [spec]


def _chat(args) -> int:
    from jaxft.recipes.embedllm.export import load_embedllm

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    chat = load_embedllm(args.export, llm_path=args.llm)
    texts = conversations_of(args.conversation, chat.layout.separator, args.text_column)
    replies = chat.reply(texts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    for note in chat.notes:  # what the export's layout cut or dropped, so no cut is silent
        print(f"note: {note}", file=sys.stderr)
    for text, reply in zip(texts, replies):
        if len(texts) > 1:
            print(f"### {text}")
        print(reply)
    return 0


COMMANDS = {"chat": _chat, "convert-perceiver": _convert_perceiver, "import-reference": _import_reference}


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    """Known failures (missing export, bad files) are one ``error:`` line and exit code 2."""
    from jaxft.errors import cli_boundary

    return cli_boundary(_main)(argv)
