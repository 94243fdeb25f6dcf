"""Uploading an export directory to the Hugging Face Hub, with a model card.

    python -m jaxft.export push runs/qwen/export USER/NAME [--private]
    python -m jaxft.export check runs/qwen/export          # what would be uploaded, and whether it loads

The directory is uploaded as it is, in one commit: an lm export's ``adapter/`` and
``merged/`` become subfolders of the repo (``PeftModel.from_pretrained(base, "USER/NAME",
subfolder="adapter")``, ``AutoModelForCausalLM.from_pretrained("USER/NAME", subfolder="merged")``);
pushing ``export/merged`` itself puts the model at the repo root. When the directory has no
``README.md``, a model card is generated from what it holds (the base models named by
``adapter_config.json`` and ``condenser.json``); it is added to the upload only, so the local
export is never modified. The trainer calls ``push(export_dir, config.export.hub_repo)`` after
the local export is written; any failure is one line and the local export stays as it was.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from jaxft.errors import fail, one_line

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class ExportError(ValueError):
    """An export directory that would not load after upload; the message names the file."""


def _files(directory: Path) -> list[Path]:
    """The files to upload: everything but hidden files and caches."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and not any(
        part.startswith(".") or part == "__pycache__" for part in p.relative_to(directory).parts))


def _read(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{file}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{file}: expected a JSON object")
    return data


def _check_model_dir(directory: Path) -> None:
    """A transformers checkpoint: config.json with model_type, and all of its weights."""
    config = _read(directory / "config.json")
    if "model_type" not in config:
        raise ExportError(f"{directory / 'config.json'}: no 'model_type'; AutoModel cannot load it")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        missing = sorted({f for f in _read(index).get("weight_map", {}).values() if not (directory / f).is_file()})
        if missing:
            raise ExportError(f"{index}: shard files missing: {', '.join(missing)}")
    elif not any((directory / w).is_file() for w in _WEIGHTS):
        raise ExportError(f"{directory}: config.json without weights ({' or '.join(_WEIGHTS)})")


def _check_adapter_dir(directory: Path) -> None:
    config = _read(directory / "adapter_config.json")
    if "peft_type" not in config:
        raise ExportError(f"{directory / 'adapter_config.json'}: no 'peft_type'; peft cannot load it")
    if not any((directory / w).is_file() for w in _ADAPTER_WEIGHTS):
        raise ExportError(f"{directory}: adapter_config.json without {' or '.join(_ADAPTER_WEIGHTS)}")


def check_export(directory: str | Path) -> list[Path]:
    """The files an upload of ``directory`` would hold, after checking that every model and
    adapter folder in it has what ``from_pretrained`` needs. Raises ``ExportError``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: no such export directory")
    files = _files(directory)
    if not files:
        raise ExportError(f"{directory}: the export directory is empty")
    for file in files:
        if file.name == "config.json" and not (file.parent / "adapter_config.json").exists():
            _check_model_dir(file.parent)
        elif file.name == "adapter_config.json":
            _check_adapter_dir(file.parent)
    return files


def _is_hub_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not Path(name).expanduser().exists()


def _top_level_json(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The small JSON objects at the top of an export (recipe metadata such as condenser.json or
    embedllm.json); tokenizer files, indexes and anything unreadable are no concern here."""
    out = []
    for file in sorted(directory.glob("*.json")):
        if not file.is_file() or file.stat().st_size >= 1 << 20:
            continue
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            out.append((file, data))
    return out


def _sections_with_source(meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, section)`` for each top-level section recording where a base model came from
    (``{"source": ..., "bundled": ...}``, as the condense and embedllm exports write them)."""
    return [(k, v) for k, v in meta.items() if isinstance(v, dict) and ("source" in v or "bundled" in v)]


def base_models(directory: str | Path) -> list[str]:
    """Where the base weights of an export come from, as recorded in it: the
    ``base_model_name_or_path`` of each PEFT adapter, the ``source`` of each section of a
    top-level JSON file (a condenser's encoder and decoder, an embedllm's LLM), and a
    ``"base_models"`` list in such a file. Without duplicates or empty entries."""
    directory = Path(directory)
    found = [str(_read(f).get("base_model_name_or_path") or "")
             for f in _files(directory) if f.name == "adapter_config.json"]
    for _, meta in _top_level_json(directory):
        found += [str(section.get("source") or "") for _, section in _sections_with_source(meta)]
        listed = meta.get("base_models", [])
        found += [str(b) for b in listed] if isinstance(listed, list) else []
    return list(dict.fromkeys(b for b in found if b))


def model_card(directory: str | Path, repo: str) -> str:
    """README.md text for the hub: YAML metadata (base models that are hub ids, library,
    tags), what the export holds and how to load each part."""
    directory = Path(directory)
    files = [f.relative_to(directory) for f in _files(directory)]
    adapters = sorted({f.parent for f in files if f.name == "adapter_config.json"})
    models = sorted({f.parent for f in files if f.name == "config.json"} - set(adapters))
    condenser = any(f.name == "condenser.json" for f in files)
    bases = base_models(directory)
    hub_bases = [b for b in bases if _is_hub_id(b)]

    meta = ["---"]
    if hub_bases:
        meta += ["base_model:"] + [f"- {b}" for b in hub_bases]
    meta.append(f"library_name: {'peft' if adapters and not models else 'transformers'}")
    meta += ["tags:", "- jaxft"] + (["- lora"] if adapters else []) + (["- context-compression"] if condenser else [])
    meta.append("---")

    def sub(folder: Path) -> str:
        return "" if str(folder) == "." else f', subfolder="{folder.as_posix()}"'

    body = [f"# {repo.split('/', 1)[1]}", "", "Fine-tuned with jaxft (JAX)."]
    if bases:
        body += ["", "Base models: " + ", ".join(f"`{b}`" for b in bases) + "."]
        local = [b for b in bases if not _is_hub_id(b)]
        if local:
            body += ["", "Not on the Hub (local checkpoints at training time): " + ", ".join(f"`{b}`" for b in local)
                     + "; pass the base model yourself when loading."]
    for file, info in _top_level_json(directory):
        if isinstance(info.get("format"), str):
            body += ["", f"A `{info['format']}` export: `{file.name}` describes it."]
        for key, section in _sections_with_source(info):
            if section.get("bundled") and not section.get("source"):
                body += ["", f"The {key} base model has no hub source (trained or randomly initialised for this "
                         f"export) and is included as `{key}/`."]
    if condenser:
        body += ["", "A condense-token context compressor: `condenser.json` and `condenser.safetensors` hold the "
                 "condense tokens, projector and markers; `adapter/` the encoder LoRA. Load it with "
                 "`jaxft.recipes.condense.inference.load_condenser`."]
    usage = []
    for folder in models:
        usage += ["from transformers import AutoModelForCausalLM",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo}"{sub(folder)})']
    unnamed = [f for f in adapters if not _read(directory / f / "adapter_config.json").get("base_model_name_or_path")]
    if unnamed:
        body += ["", "No base model is recorded for " + ", ".join(f"`{f.as_posix()}/`" for f in unnamed)
                 + " (trained on a randomly initialised or unnamed base); load it onto the base it was trained on."]
    for folder in adapters:
        base = _read(directory / folder / "adapter_config.json").get("base_model_name_or_path") or "BASE_MODEL"
        usage += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                  f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                  f'model = PeftModel.from_pretrained(base, "{repo}"{sub(folder)})']
    if usage:
        body += ["", "```python", *usage, "```"]
    body += ["", "Files:", ""] + [f"- `{f.as_posix()}`" for f in files]
    return "\n".join(meta + body) + "\n"


def upload_plan(directory: str | Path, repo: str) -> list[tuple[str, Path | bytes]]:
    """(path in repo, local file or bytes) of everything ``push`` uploads."""
    directory = Path(directory)
    plan: list[tuple[str, Path | bytes]] = [(f.relative_to(directory).as_posix(), f) for f in check_export(directory)]
    if not (directory / "README.md").is_file():
        plan.append(("README.md", model_card(directory, repo).encode()))
    return plan


def _push(directory: Path, repo: str, *, token: str | None, private: bool) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi

    if not _REPO_ID.match(repo):
        raise ExportError(f"hub repo '{repo}': expected USER/NAME")
    plan = upload_plan(directory, repo)  # checked before any network call
    api = HfApi(token=token)
    url = api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(src) if isinstance(src, Path) else src)
                  for path, src in plan]
    api.create_commit(repo, operations=operations, repo_type="model",
                      commit_message=f"Upload {directory.name} from jaxft")
    return str(url)


def push(export_dir: str | Path, repo: str, *, token: str | None = None, private: bool = False) -> str | None:
    """Upload ``export_dir`` to the hub model repo ``repo`` (USER/NAME); returns its URL.

    Never raises: any failure (no network, no token, a broken export) is one line on
    stderr and ``None``. Nothing in ``export_dir`` is written or removed.
    """
    directory = Path(export_dir)
    try:
        return _push(directory, repo, token=token, private=private)
    except ExportError as e:
        message = str(e)
    except Exception as e:  # network, auth, hub errors: the run and its local export are done
        message = f"{type(e).__name__}: {one_line(e)}"
    print(f"error: hub push of {directory} to {repo} failed: {message} (the local export is intact)",
          file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxft.export", description="Hub upload of a jaxft export.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("push", help="upload DIR to the hub model repo USER/NAME")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("repo", metavar="USER/NAME")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the saved login)")
    c = verbs.add_parser("check", help="list what a push of DIR would upload, checking it loads")
    c.add_argument("directory", metavar="DIR")
    c.add_argument("--repo", default="USER/NAME", help="repo name used in the generated model card")
    args = parser.parse_args(argv)
    if args.verb == "push":  # push reports its own failures (one line) and returns None
        url = push(args.directory, args.repo, token=args.token, private=args.private)
        if url is None:
            return 2
        print(url)
        return 0
    try:
        plan = upload_plan(args.directory, args.repo)
    except ExportError as e:
        return fail(one_line(e))
    for path, src in plan:
        print(f"{path}\t{'(generated model card)' if isinstance(src, bytes) else src.stat().st_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
