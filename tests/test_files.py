"""``jaxft.files.read_document``: a document file's text, or one error naming the file."""

import pytest

from jaxft.files import read_document


def test_read_document_gives_the_text_and_names_the_file_it_cannot_read(tmp_path):
    good = tmp_path / "doc.txt"
    good.write_bytes("\ufeffFirst line.\nÜnïcode second line.\n".encode("utf-8"))
    assert read_document(good) == "First line.\nÜnïcode second line.\n"  # a byte-order mark is not text

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("First line.\nna\u00efve in Latin-1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{bad}:2: not valid UTF-8 \(byte 14\)$"):
        read_document(bad)
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'missing.txt'}: no such file$"):
        read_document(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_document(tmp_path)  # a directory is not a document
