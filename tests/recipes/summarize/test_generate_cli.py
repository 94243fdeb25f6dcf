"""``python -m jaxft.recipes.summarize generate --file``: the file's text is the document that is summarised."""

import pytest

from jaxft.recipes.summarize import build
from jaxft.recipes.summarize import evaluation as evaluation_module
from jaxft.recipes.summarize.cli import main
from tests.configs import recipe_config

DOCUMENT = "The committee met on Tuesday.\nIt approved the budget for the new library, ünïcode and all.\n"


@pytest.mark.slow  # builds the smoke task, exports it and decodes (about a minute on a loaded 2-core CPU)
def test_generate_summarises_the_text_of_file(tmp_path, capsys, monkeypatch):
    config = recipe_config("summarize", "smoke")
    task = build(config, None)
    export = tmp_path / "export"
    task.export_fn(str(export), task.trainable, task.frozen)
    (tmp_path / "doc.txt").write_text(DOCUMENT, encoding="utf-8")

    seen, real = [], evaluation_module.generate_summaries

    def recording(cfg, params, tokenizer, encoder, documents, **kw):
        seen.append(list(documents))
        return real(cfg, params, tokenizer, encoder, documents, **kw)

    monkeypatch.setattr(evaluation_module, "generate_summaries", recording)
    capsys.readouterr()
    args = ["generate", "--export", str(export), "--greedy", "--max-new-tokens", "6"]
    assert main(args + ["--file", str(tmp_path / "doc.txt")]) == 0
    from_file = capsys.readouterr().out
    assert main(args + ["--text", DOCUMENT]) == 0
    assert seen == [[DOCUMENT], [DOCUMENT]]
    assert from_file == capsys.readouterr().out and from_file.strip()  # the same summary, printed

    assert main(args + ["--file", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.txt'}: no such file"
    (tmp_path / "latin1.txt").write_bytes("Caf\u00e9 committee.\n".encode("latin-1"))
    assert main(args + ["--file", str(tmp_path / "latin1.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'latin1.txt'}:1: not valid UTF-8 (byte 3)"
    (tmp_path / "blank.txt").write_text(" \n")
    assert main(args + ["--file", str(tmp_path / "blank.txt")]) == 2
    assert capsys.readouterr().err.strip() == "error: the document is empty"
