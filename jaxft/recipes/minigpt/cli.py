"""Command line of the minigpt recipe (``python -m jaxft.recipes.minigpt``, or ``jaxft minigpt``).

    python -m jaxft.recipes.minigpt tokenizer --input corpus.txt --vocab-size 16000 --model-type unigram --output tok/
    python -m jaxft.recipes.minigpt tokenizer --input corpus.txt --char --output tok/
    python -m jaxft.recipes.minigpt sample --ckpt runs/minigpt/export --prompt "The module" [--temp 0.6] ...
    python -m jaxft.recipes.minigpt export-gguf --ckpt runs/minigpt/export --out model.gguf [--type f16|q8_0]
    python -m jaxft.recipes.minigpt import-pth --pth pth/ckpt_best.pth --spm data/spm_en8k.model --out imported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxft.errors import cli_boundary

# SentencePiece reads sentences of at most this many bytes; longer paragraphs are cut into pieces.
_MAX_SENTENCE = 1 << 15


def _flag(name: str, *more: str) -> tuple[str, ...]:
    """``--top-p`` and the reference's ``--top_p``: both spellings of a flag (``quick_sample.py`` uses the
    underscore ones)."""
    spellings = [name, *more]
    return tuple(dict.fromkeys(spellings + [s.replace("-", "_").replace("__", "--", 1) for s in spellings]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxft.recipes.minigpt", description=__doc__.split("\n\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)

    t = verbs.add_parser("tokenizer", help="train a SentencePiece (or build a character) tokenizer")
    t.add_argument("--input", nargs="+", required=True, help="UTF-8 text files")
    t.add_argument("--output", required=True, help="directory for tokenizer.model and the transformers files")
    t.add_argument(*_flag("--vocab-size"), type=int, default=16000)
    t.add_argument(*_flag("--model-type"), choices=("unigram", "bpe"), default="unigram")
    t.add_argument("--char", action="store_true", help="a character vocabulary instead of SentencePiece")

    s = verbs.add_parser("sample", help="generate with the reference sampler; prints '### Prompt i' blocks")
    s.add_argument("--ckpt", required=True, help="an export directory of a minigpt run (or a model directory)")
    s.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    s.add_argument(*_flag("--prompt-file", "--prompts-file"),
                   help="prompts: paragraphs separated by blank lines, else one per line")
    s.add_argument("--temp", type=float, default=0.6, help="temperature; <= 0 is greedy")
    s.add_argument(*_flag("--top-p"), type=float, default=0.92)
    s.add_argument(*_flag("--min-new"), type=int, default=40, help="EOS is banned before this many new tokens")
    s.add_argument(*_flag("--max-new"), type=int, default=120)
    s.add_argument(*_flag("--rep-penalty"), type=float, default=1.2, help="subtract ln(p) * count from seen tokens")
    s.add_argument(*_flag("--no-repeat"), type=int, default=5, help="ban the last N ids")
    s.add_argument("--seed", type=int, default=0)

    g = verbs.add_parser("export-gguf", help="write a llama-family checkpoint as a GGUF file")
    g.add_argument("--ckpt", required=True, help="an export directory of a minigpt run (or a model directory)")
    g.add_argument("--out", required=True, help="the .gguf file to write")
    g.add_argument("--type", choices=("f32", "f16", "q8_0"), default="f16")

    m = verbs.add_parser("import-pth", help="the reference's .pth checkpoint as a model directory")
    m.add_argument("--pth", required=True, help="ckpt_minGPT.pth or ckpt_best.pth of the reference's train.py")
    m.add_argument("--spm", required=True, help="the SentencePiece .model the checkpoint was trained with")
    m.add_argument("--out", required=True, help="the model directory to write (for sample, init_from, export-gguf)")
    return p


def read_prompts(inline: list[str], prompt_file: str | None) -> list[str]:
    prompts = list(inline)
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-file: no such file '{prompt_file}'")
        lines = path.read_text(encoding="utf-8").splitlines()
        if any(not line.strip() for line in lines):
            block: list[str] = []
            for line in lines + [""]:
                if line.strip():
                    block.append(line)
                elif block:
                    prompts.append("\n".join(block))
                    block = []
        else:
            prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise ValueError("give at least one --prompt or a --prompt-file with prompts")
    return prompts


def _paragraphs(files: list[str]):
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"--input: no such file '{name}'")
        text = path.read_text(encoding="utf-8")
        for para in text.split("\n\n"):
            for start in range(0, len(para), _MAX_SENTENCE // 4):  # 4 bytes per character at most
                piece = para[start:start + _MAX_SENTENCE // 4]
                if piece.strip():
                    yield piece


def _tokenizer(args) -> int:
    if args.char:
        from jaxft.tokenization.char import build_char_vocab

        texts = [Path(f).read_text(encoding="utf-8") if Path(f).is_file() else _missing(f) for f in args.input]
        tok = build_char_vocab(texts, args.output)
    else:
        from jaxft.tokenization.sentencepiece import train_sentencepiece

        tok = train_sentencepiece(list(_paragraphs(args.input)), args.output, vocab_size=args.vocab_size,
                                  model_type=args.model_type)
    print(f"wrote {args.output}: {len(tok)} tokens ({'characters' if args.char else args.model_type})")
    return 0


def _missing(name: str):
    raise FileNotFoundError(f"--input: no such file '{name}'")


def _clean_visible(text: str) -> str:
    # Control characters other than newline and tab are dropped from printed samples.
    return "".join(ch for ch in text if ord(ch) >= 32 or ch in "\n\t")


def _sample(args) -> int:
    import numpy as np

    from jaxft.recipes.minigpt.export import load_for_inference
    from jaxft.recipes.minigpt.sampling import reference_sampling
    from jaxft.sampling import generate

    prompts = read_prompts(args.prompt, args.prompt_file)
    cfg, params, tokenizer = load_for_inference(args.ckpt)
    sampling = reference_sampling(cfg, tokenizer, temp=args.temp, top_p=args.top_p, min_new=args.min_new,
                                  max_new=args.max_new, rep_penalty=args.rep_penalty, no_repeat=args.no_repeat)
    room = cfg.max_position_embeddings - sampling.max_new_tokens
    for i, prompt in enumerate(prompts, 1):
        ids = tokenizer.encode(prompt, add_special_tokens=False) or [tokenizer.eos_token_id]
        if len(ids) > room:
            print(f"note: prompt {i} keeps its last {room} of {len(ids)} tokens (context "
                  f"{cfg.max_position_embeddings}, --max-new {sampling.max_new_tokens})", file=sys.stderr)
            ids = ids[-room:]
        out = generate(cfg, params, np.asarray([ids], np.int32), sampling, seed=args.seed + i - 1)
        text = tokenizer.decode(ids + out.token_lists()[0], skip_special_tokens=True)
        sys.stdout.write(f"### Prompt {i}\n{prompt}\n---\n{_clean_visible(text).strip()} \n\n")
    return 0


def _export_gguf(args) -> int:
    from jaxft.checkpoint.gguf_export import write_gguf
    from jaxft.recipes.minigpt.export import load_for_inference, model_dir, spm_model_of

    cfg, params, tokenizer = load_for_inference(args.ckpt)
    path = write_gguf(args.out, cfg, params, tokenizer, spm_model=spm_model_of(model_dir(args.ckpt)),
                      tensor_type=args.type)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.type})")
    return 0


def _import_pth(args) -> int:
    from jaxft.recipes.minigpt.reference import import_pth

    path = import_pth(args.pth, args.spm, args.out)
    print(f"wrote {path} (from {args.pth})")
    return 0


@cli_boundary
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "tokenizer":
        return _tokenizer(args)
    if args.verb == "sample":
        return _sample(args)
    if args.verb == "import-pth":
        return _import_pth(args)
    return _export_gguf(args)
