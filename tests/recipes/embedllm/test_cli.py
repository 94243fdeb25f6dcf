"""The chat command's failures are one line and exit code 2."""

from __future__ import annotations

from jaxft.recipes.embedllm.cli import main


def test_missing_export_is_one_line(tmp_path, capsys):
    assert main(["chat", "--export", str(tmp_path / "nope"), "--conversation", "a<|turn|>b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "embedllm.json" in err and err.count("\n") == 1


def test_broken_export_config_is_named(tmp_path, capsys):
    (tmp_path / "embedllm.json").write_text('{"format": "jaxft-embedllm", "version": 2}')
    assert main(["chat", "--export", str(tmp_path), "--conversation", "a<|turn|>b"]) == 2
    assert "key 'llm' is missing" in capsys.readouterr().err
