"""The reference's three ``modules.pt`` layouts, written by torch with its exact keys and shapes (read from
condense_core.py at 0778111, callbacks.py at 9f0fadd, causal_lm.py at 4c5c879), read by jaxft and imported
into the design each belongs to; R1 round trip torch -> jaxft -> torch is exact."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxft.recipes.condense import gist
from jaxft.recipes.condense.gist_task import import_gist
from jaxft.recipes.condense.reference import import_reference
from jaxft.recipes.condense.reference_formats import read_reference, write_gist, write_r1
from tests.recipes.condense.helpers import N, tiny_cfg, tiny_condenser

H = 64  # the helpers' hidden size


def write_format(file, fmt: str, n: int, h_enc: int, h_dec: int, flags: int = 1, seed: int = 0) -> dict:
    """What each reference state saves (torch.save), returned as the torch objects it saved."""
    import torch

    torch.manual_seed(seed)
    if fmt == "r1":  # LitCondenseLLM.on_validation_epoch_end
        linear, norm = torch.nn.Linear(2 * h_enc, h_dec), torch.nn.LayerNorm(2 * h_enc)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        tokens = torch.nn.Parameter(torch.randn(1, n, h_enc))
        state = {"modules": {"pre_condensed_tokens": tokens.detach().cpu(), "linear_state_dict": linear.state_dict(),
                             "norm_state_dict": norm.state_dict()}}
    elif fmt == "modules":  # SaveModelHuggingface.on_validation_end
        state = {"modules": {"condense_tokens": torch.nn.Parameter(torch.randn(1, n, h_enc)).detach().cpu(),
                             "ae_embedding": torch.nn.Parameter(torch.randn(1, 1, h_enc)).detach().cpu(),
                             "lm_embedding": torch.nn.Parameter(torch.randn(1, 1, h_enc)).detach().cpu()}}
    else:  # MultiSpanGistCausalLM.push_to_hub: the parameters themselves
        state = {"lm_embedding": torch.nn.Parameter(torch.randn(flags, h_enc)),
                 "auto_encoding_embedding": torch.nn.Parameter(torch.randn(flags, h_enc)),
                 "gist_tokens": torch.nn.Parameter(torch.randn(n, h_enc))}
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, file)
    return state


def _gist_model(n: int = 4):
    from jaxft import lora as lora_lib

    cfg = tiny_cfg("llama", 16)
    return gist.GistModel(llm=cfg, layout=gist.GistLayout(span_length=8, num_gist_tokens=n, max_tokens=16),
                          lora_config=lora_lib.LoraConfig(rank=8, alpha=8.0))


@pytest.mark.parametrize("fmt", ["r1", "modules", "gist"])
def test_each_reference_format_reads_with_its_key_layout(tmp_path, fmt):
    file = tmp_path / "checkpoints" / "modules.pt"
    state = write_format(file, fmt, 4, H, 2 * H)
    got = read_reference(file)
    assert got.format == fmt
    flat = {f"modules.{k}": v for k, v in state["modules"].items()} if "modules" in state else state
    expected = {}
    for key, value in flat.items():
        for sub, tensor in (value.items() if isinstance(value, dict) else [(None, value)]):
            expected[key if sub is None else f"{key}.{sub}"] = tensor.detach().numpy()
    assert sorted(got.tensors) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got.tensors[key], value)


@pytest.mark.parametrize("fmt", ["modules", "gist"])
def test_later_formats_import_into_the_gist_design(tmp_path, fmt):
    model = _gist_model()
    trainable = {"lora": {}, **gist.init_params(jax.random.key(0), model)}
    state = write_format(tmp_path / "modules.pt", fmt, 4, H, H)
    imported = import_gist(tmp_path, model, trainable)
    if fmt == "modules":
        tokens, ae, lm = (state["modules"][k][0] for k in ("condense_tokens", "ae_embedding", "lm_embedding"))
    else:
        tokens, ae, lm = (state[k] for k in ("gist_tokens", "auto_encoding_embedding", "lm_embedding"))
    np.testing.assert_array_equal(imported["gist_tokens"], tokens.detach().numpy())
    np.testing.assert_array_equal(imported["flags"]["ae"], ae.detach().numpy())
    np.testing.assert_array_equal(imported["flags"]["lm"], lm.detach().numpy())
    # The condense design (a projector) refuses them by name, and the gist design refuses R1.
    cmodel, ctrainable, _ = tiny_condenser("reference")
    with pytest.raises(ValueError, match="has no projector; it imports into condense.design=gist"):
        import_reference(tmp_path, cmodel, ctrainable)
    write_format(tmp_path / "r1" / "modules.pt", "r1", 4, H, H)
    with pytest.raises(ValueError, match="has a projector; it imports into condense.design=condense"):
        import_gist(tmp_path / "r1", model, trainable)
    wrong = dataclasses.replace(model, layout=gist.GistLayout(span_length=8, num_gist_tokens=2, max_tokens=16))
    with pytest.raises(ValueError, match=r"has shape \(.*4, 64\), condense.design=gist .* needs \(.*2, 64\)"):
        import_gist(tmp_path, wrong, trainable)


def test_r1_round_trip_is_exact(tmp_path):
    import torch

    model, trainable, _ = tiny_condenser("reference")
    written = write_format(tmp_path / "ref" / "checkpoints" / "modules.pt", "r1", N, H, H)
    imported = import_reference(tmp_path / "ref", model, trainable)
    out = write_r1(tmp_path / "out" / "checkpoints" / "modules.pt", imported["condense_tokens"],
                   jax.device_get(imported["projector"]))
    again = torch.load(out, weights_only=True)
    assert again.keys() == written.keys() and again["modules"].keys() == written["modules"].keys()
    for name in ("linear_state_dict", "norm_state_dict"):
        assert list(again["modules"][name]) == list(written["modules"][name])
        for key, tensor in written["modules"][name].items():
            assert torch.equal(again["modules"][name][key], tensor), (name, key)
    assert torch.equal(again["modules"]["pre_condensed_tokens"], written["modules"]["pre_condensed_tokens"])
    # The reference's own loading (LitCondenseLLM.from_pretrained / Condenser.load_state_dict) takes it strictly.
    torch.nn.Linear(2 * H, H).load_state_dict(again["modules"]["linear_state_dict"])
    torch.nn.LayerNorm(2 * H).load_state_dict(again["modules"]["norm_state_dict"])


def test_gist_writer_reads_back(tmp_path):
    rs = np.random.RandomState(0)
    tokens, ae, lm = rs.randn(4, H), rs.randn(1, H), rs.randn(1, H)
    got = read_reference(write_gist(tmp_path / "modules.pt", tokens, ae, lm))
    assert got.format == "gist"
    for key, value in (("gist_tokens", tokens), ("auto_encoding_embedding", ae), ("lm_embedding", lm)):
        np.testing.assert_array_equal(got.tensors[key], value.astype(np.float32))


def test_unknown_layouts_are_refused_by_name(tmp_path):
    import torch

    file = tmp_path / "modules.pt"
    torch.save({"modules": {"condense_tokens": torch.zeros(1, 2, 3), "ae_embedding": torch.zeros(1, 1, 3)}}, file)
    with pytest.raises(ValueError, match=r"the modules format .* needs a tensor 'modules.lm_embedding'"):
        read_reference(file)
    torch.save({"weights": torch.zeros(2)}, file)
    with pytest.raises(ValueError, match=r"not a reference modules.pt \(keys: \['weights'\]\)"):
        read_reference(file)


def _condense_export(directory, trainable, model, projector="reference"):
    """The files of a condense export that the conversion reads (as export_condenser writes them)."""
    import json

    from safetensors.numpy import save_file

    from jaxft import lora as lora_lib
    from jaxft.files import flatten_tree
    from jaxft.recipes.condense import export

    directory.mkdir(parents=True)
    tree = {k: trainable[k] for k in ("condense_tokens", "projector", "markers")}
    save_file(flatten_tree(jax.device_get(tree)), str(directory / export.WEIGHTS_FILE))
    (directory / export.CONFIG_FILE).write_text(json.dumps({"projector": projector}))
    lora_lib.save_peft(directory / "adapter", model.encoder, lora_lib.LoRA(trainable["lora"], model.lora_config))


def test_exports_convert_to_the_reference_files(tmp_path, capsys):
    import torch

    from jaxft.recipes.condense import gist_inference
    from jaxft.recipes.condense.reference_export import main

    model, trainable, _ = tiny_condenser("reference")
    _condense_export(tmp_path / "export", trainable, model)
    assert main([str(tmp_path / "export"), str(tmp_path / "repo")]) == 0
    saved = torch.load(tmp_path / "repo" / "checkpoints" / "modules.pt", weights_only=True)["modules"]
    np.testing.assert_array_equal(saved["pre_condensed_tokens"][0].numpy(), np.asarray(trainable["condense_tokens"]))
    np.testing.assert_array_equal(saved["linear_state_dict"]["weight"].numpy(),
                                  np.asarray(trainable["projector"]["linear"]["kernel"]).T)
    assert (tmp_path / "repo" / "adapter_config.json").is_file()  # at the root, as the reference's hub repos
    assert "(r1 format)" in capsys.readouterr().out

    gmodel = _gist_model()
    gtrainable = {"lora": trainable["lora"], **gist.init_params(jax.random.key(3), gmodel)}
    gist_inference.export_gist(tmp_path / "gexport", dataclasses.replace(gmodel, lora_config=model.lora_config),
                               gtrainable, None, _byte_tokenizer(), "tiny/llama")  # a source: no LLM bundled
    assert main([str(tmp_path / "gexport"), str(tmp_path / "grepo")]) == 0
    got = import_gist(tmp_path / "grepo", dataclasses.replace(gmodel, llm=model.encoder), gtrainable)
    np.testing.assert_array_equal(got["gist_tokens"], gtrainable["gist_tokens"])
    np.testing.assert_array_equal(got["flags"]["lm"], gtrainable["flags"]["lm"])

    # Bad input: one line, exit code 2.
    _condense_export(tmp_path / "linear", trainable, model, projector="linear_norm")
    assert main([str(tmp_path / "linear"), str(tmp_path / "x")]) == 2
    assert "R1's modules.pt holds the reference projector only" in capsys.readouterr().err
    assert main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2


def _byte_tokenizer():
    from tests.recipes.condense.helpers import byte_tokenizer

    return byte_tokenizer()
