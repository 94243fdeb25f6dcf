"""Finding and replacing kernels in the nested parameter dict.

A *module path* is the path of the dict that holds a ``"kernel"`` entry, e.g.
``("model", "layers", "self_attn", "q_proj")``. Adapters and quantized kernels
are keyed by exactly these paths, so they line up with ``param_specs``.
"""

from __future__ import annotations

import fnmatch
from typing import Any

ModulePath = tuple[str, ...]


def module_paths(params: dict[str, Any], prefix: ModulePath = ()) -> list[ModulePath]:
    """Every module path that holds a kernel, in a stable (sorted) order."""
    found = []
    for key in sorted(params):
        node = params[key]
        if not isinstance(node, dict):
            continue
        if "kernel" in node:
            found.append(prefix + (key,))
        found += module_paths(node, prefix + (key,))
    return found


def matches(pattern: str, path: ModulePath) -> bool:
    """A target matches the module name (``q_proj``), a dotted suffix of the path
    (``mlp.down_proj``), or either of those as a glob (``*_proj``, ``mlp.*``)."""
    parts = pattern.split(".")
    return len(parts) <= len(path) and all(
        fnmatch.fnmatchcase(name, part) for name, part in zip(path[-len(parts):], parts))


def select(params: dict[str, Any], targets: tuple[str, ...], within: ModulePath = ()) -> list[ModulePath]:
    """Module paths under ``within`` matched by any target; a target matching nothing is an error."""
    candidates = [p for p in module_paths(params) if p[:len(within)] == within]
    unmatched = [t for t in targets if not any(matches(t, p) for p in candidates)]
    if unmatched:
        names = sorted({p[-1] for p in candidates})
        raise ValueError(f"target(s) {unmatched} match no kernel in the parameters "
                         f"(available modules: {', '.join(names)})")
    return [p for p in candidates if any(matches(t, p) for t in targets)]


def get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    node = tree
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"parameters have no entry '{'/'.join(path[:i + 1])}'")
        node = node[key]
    return node


def replace(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``tree`` with ``path`` set to ``value``; only the dicts on the path are copied."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if rest and head not in tree:
        raise KeyError(f"parameters have no entry '{head}'")
    return {**tree, head: replace(tree[head], rest, value) if rest else value}

