"""``python -m jaxft.bench.summary``: the module tree of a checkpoint, counted like the loaded tree."""

import jax
import numpy as np
import pytest

import jaxft
from jaxft.checkpoint.hf_names import param_specs
from jaxft.bench import summary


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_summary_of_a_checkpoint_counts_what_loads(tiny_dir, family, capsys):
    directory = tiny_dir(family)
    assert summary.main(["--model", str(directory), "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    cfg, params = jaxft.load_pretrained(directory)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert f"total: {total:,} parameters" in out
    lines = out.splitlines()
    q_row = next(line for line in lines if line.startswith("model/layers/self_attn/q_proj "))
    kernel = params["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert q_row.split()[1:3] == ["Dense", "kernel"]
    assert "[" + ", ".join(map(str, kernel.shape)) + "]" in q_row
    assert "bfloat16" in q_row and "(layers, embed, heads)" in q_row
    rows = summary.rows(cfg)
    assert {(r.module, r.name) for r in rows} == {("/".join(s.path[:-1]), s.path[-1]) for s in param_specs(cfg)}
    assert rows[0].module == "model/embed_tokens"  # in the order the modules run


def test_summary_of_a_preset_and_a_bad_path(capsys):
    cfg = summary.resolve_config("llama-3.2-1b")
    assert sum(r.size for r in summary.rows(cfg)) == 1_235_814_400  # Llama-3.2-1B's published count (tied)
    assert summary.main(["--model", "/no/such/checkpoint"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "/no/such/checkpoint" in err[0]
