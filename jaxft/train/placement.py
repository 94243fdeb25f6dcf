"""Where every leaf lives: a mesh, the logical -> mesh axis rules, and ``sharding_for(path, shape)``.

Recipes get a ``Placement`` from the trainer and hand it to ``jaxft.loaders.load_model``, so a
frozen base is streamed tensor by tensor straight onto the sharding the trainer will ask for
(``jaxft.train.sharding``'s rules: the decoder's declared logical axes, else the generic rule);
placing it again is then a no-op.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Mapping

from jax.sharding import Mesh, NamedSharding

from jaxft.train import mesh as mesh_lib
from jaxft.train.sharding import leaf_sharding, tree_shardings

Rules = Mapping[str, tuple[str, ...] | str | None]


def rules_with(overrides: Mapping) -> dict:
    """``mesh_lib.DEFAULT_RULES`` with ``overrides`` on top (lists read as tuples)."""
    rules = dict(mesh_lib.DEFAULT_RULES)
    rules.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(overrides).items()})
    return rules


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: Mesh
    rules: Rules = dataclasses.field(default_factory=lambda: dict(mesh_lib.DEFAULT_RULES))

    @classmethod
    def of(cls, shape: Mapping[str, int], rule_overrides: Mapping) -> Placement:
        """The mesh of ``shape`` (a mesh section's) and the default rules with ``rule_overrides`` on top."""
        return cls(mesh_lib.make_mesh(dict(shape)), rules_with(rule_overrides))

    def sharding_for(self, path: tuple[str, ...], shape: tuple[int, ...]) -> NamedSharding:
        """The sharding of the leaf at ``path`` (any prefix before the decoder's own path) of ``shape``."""
        return leaf_sharding(tuple(path), tuple(shape), self.mesh, self.rules)

    def shardings(self, tree: Any, axes_tree: Any | None = None) -> Any:
        return tree_shardings(tree, self.mesh, self.rules, axes_tree)
