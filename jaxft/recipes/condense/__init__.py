"""Condense: compress a long text into a few embeddings a frozen decoder LLM can read.

An encoder LLM with LoRA reads the text (in one or more segments), each segment followed
by learned condense tokens; their last two hidden states, normalised and projected to the
decoder's embedding size, replace the text in the decoder's input. Training teaches the
decoder-side reading by auto-encoding (reconstruct the text), multi-level continuation
(continue the text from the states of its first segments, to its end) and, for records
with a prompt and a completion, the instruction objective.

* ``model``: encoder + condense tokens + projector (a flax module), decoder input assembly
* ``objectives``: the AE, continuation and instruction losses (``TrainTask`` sums)
* ``data``: text -> both tokenizations and fixed-shape segments and targets
* ``recipe``: ``build(config, placement) -> TrainTask`` (``configs/condense.py``)
* ``reference_formats``: the reference trainer's three ``modules.pt`` layouts, read and written
* ``reference``: import its R1 ``modules.pt`` and PEFT LoRA; ``reference_export``: an export as its repo files
* ``gist`` / ``gist_task``: its single-model gist design (``condense.design=gist``, preset ``seed_gist``)
* ``export`` / ``inference``: a trained condenser on disk; ``compress`` and ``generate``
* ``evaluate``: condensed vs no-context losses on a config's validation records
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
