"""Condense: compress a long text into a few embeddings a frozen decoder LLM can read.

An encoder LLM with LoRA reads the text segment by segment, each segment followed
by learned condense tokens; their final hidden states, projected to the decoder's
embedding size, replace the text in the decoder's input. Training teaches the
decoder-side reading by auto-encoding (reconstruct the text) and multi-level
continuation (continue the text from the states of its first segments).

* ``model``: encoder + condense tokens + projector, decoder input assembly
* ``objectives``: the AE and continuation losses (``TrainTask`` sums)
* ``data``: text -> both tokenizations and fixed-shape segments
* ``recipe``: ``build(config, mesh) -> TrainTask`` (``configs/condense.py``)
* ``export`` / ``inference``: a trained condenser on disk; ``compress`` and ``generate``
* ``cli``: ``python -m jaxft.recipes.condense compress|generate``
"""

from jaxft.recipes.condense.data import ExampleBuilder, Layout
from jaxft.recipes.condense.inference import Condenser, load_condenser
from jaxft.recipes.condense.model import CondenseModel, condense_position_ids
from jaxft.recipes.condense.recipe import build


def load_export(directory: str) -> Condenser:
    """The trained condenser an export directory holds (what ``export_fn`` wrote)."""
    return load_condenser(directory)


__all__ = ["CondenseModel", "Condenser", "ExampleBuilder", "Layout", "build", "condense_position_ids",
           "load_condenser", "load_export"]
