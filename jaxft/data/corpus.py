"""Offline demo text: English prose taken from the docstrings of Python's own standard library.

Nothing third-party is shipped or downloaded: the paragraphs are collected at run time from the
interpreter that runs this code, in a deterministic order, so two runs on the same Python version
give the same corpus. Collection imports a few hundred standard-library modules, so it runs in a
child interpreter (the caller's ``sys.modules`` stays untouched) and the result is cached as JSON.

This file must only import the standard library: it also runs as a plain script in that child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jaxft.assets import cache_dir as jaxft_cache_dir

# Modules whose import does something (opens a browser, prints, touches the terminal, writes
# caches), that need a display, or that only hold tests, data tables or third-party shims.
SKIPPED_MODULES = frozenset({
    "antigravity", "this", "__hello__", "__phello__", "idlelib", "tkinter", "turtle", "turtledemo",
    "test", "lib2to3", "pydoc_data", "readline", "rlcompleter", "ensurepip", "distutils", "encodings",
    "msilib", "msvcrt", "winreg", "winsound", "nt",
})
MIN_PARAGRAPH_CHARS = 60
MAX_PARAGRAPH_CHARS = 2000
_COLLECT_TIMEOUT_S = 300


def python_tag() -> str:
    """Cache key part: the corpus (and anything trained on it) depends on the exact Python build."""
    v = sys.version_info
    return f"{sys.implementation.name}{v.major}.{v.minor}.{v.micro}"


def demo_corpus(min_chars: int | None = None, *, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Paragraphs of English prose from standard-library docstrings, in a fixed order.

    ``min_chars=None`` returns every paragraph; otherwise the shortest leading run of paragraphs
    holding at least ``min_chars`` characters (``ValueError`` if the whole corpus is smaller).
    """
    paragraphs = _cached_paragraphs(Path(cache_dir) if cache_dir is not None else jaxft_cache_dir())
    if min_chars is None:
        return paragraphs
    total = 0
    for count, paragraph in enumerate(paragraphs, start=1):
        total += len(paragraph)
        if total >= min_chars:
            return paragraphs[:count]
    raise ValueError(f"the demo corpus holds only {total:,} characters on this Python, "
                     f"fewer than min_chars={min_chars:,}")


def _cached_paragraphs(cache_dir: Path) -> list[str]:
    path = cache_dir / f"demo_corpus-{python_tag()}.json"
    if path.exists():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass  # unreadable cache (e.g. a foreign file): rebuild it below
    paragraphs = _collect_in_child()
    atomic_write_text(path, json.dumps(paragraphs, ensure_ascii=False))
    return paragraphs


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _collect_in_child() -> list[str]:
    # -I: isolated mode, so neither PYTHONPATH nor the user's site directory can add modules.
    done = subprocess.run([sys.executable, "-I", __file__], capture_output=True, text=True,
                          encoding="utf-8", timeout=_COLLECT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"collecting the demo corpus failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


# ---- everything below runs in the child interpreter --------------------------------------------


def _module_names() -> list[str]:
    import pkgutil
    import warnings

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIPPED_MODULES:
            continue
        names.append(top)
        module = _import_quietly(top)
        if module is None or not hasattr(module, "__path__"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            subs = [m.name for m in pkgutil.walk_packages(module.__path__, prefix=top + ".", onerror=lambda _: None)]
        names.extend(sorted(n for n in subs if not any(
            part.startswith("_") or part in ("test", "tests", "idle_test") for part in n.split(".")[1:])))
    return names


def _import_quietly(name: str):
    import contextlib
    import importlib
    import io
    import warnings

    silenced = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(silenced), contextlib.redirect_stderr(silenced):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - platform-specific modules fail to import; skip them
            return None


def _is_stdlib(module) -> bool:
    import sysconfig

    file = getattr(module, "__file__", None)
    if file is None:
        return True  # built into the interpreter
    roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]}
    resolved = os.path.realpath(file)
    return any(resolved.startswith(os.path.realpath(r) + os.sep) for r in roots) and "site-packages" not in resolved


def _docstrings(module) -> list[str]:
    """The module's docstring, then those of its own classes, functions and methods, sorted by name."""
    import inspect

    docs = [module.__doc__]
    for _, member in sorted(vars(module).items()):
        if getattr(member, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere: collected with its own module
        if inspect.isclass(member):
            docs.append(member.__doc__)
            for _, attr in sorted(vars(member).items()):
                if inspect.isfunction(attr) or inspect.ismethoddescriptor(attr) or isinstance(attr, property):
                    docs.append(getattr(attr, "__doc__", None))
        elif inspect.isfunction(member) or inspect.isbuiltin(member):
            docs.append(member.__doc__)
    return [d for d in docs if isinstance(d, str)]


def _prose_paragraphs(doc: str) -> list[str]:
    import inspect

    out = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(_looks_like_code(line) for line in lines):
            continue  # doctests, literal blocks, signatures, tables
        text = " ".join(block.split())
        if MIN_PARAGRAPH_CHARS <= len(text) <= MAX_PARAGRAPH_CHARS and _reads_like_prose(text):
            out.append(text)
    return out


def _looks_like_code(line: str) -> bool:
    stripped = line.strip()
    return (line[:1].isspace() or stripped.startswith((">>>", "...", "$ ", "#", "|", "+-", "--", "==", "::"))
            or stripped.endswith(("::", ":", "{", "(", "\\")) or "->" in stripped or " = " in stripped)


def _reads_like_prose(text: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in text)
    return (text[0].isalpha() and text.endswith(".") and letters / len(text) > 0.85
            and len(text.split()) >= 8 and text.isascii() and text.isprintable())


def _collect() -> list[str]:
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in _module_names():
        module = _import_quietly(name)
        if module is None or not _is_stdlib(module):
            continue
        for doc in _docstrings(module):
            for paragraph in _prose_paragraphs(doc):
                if paragraph not in seen:
                    seen.add(paragraph)
                    paragraphs.append(paragraph)
    return paragraphs


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # deprecated modules warn when imported or inspected
    json.dump(_collect(), sys.stdout, ensure_ascii=False)
