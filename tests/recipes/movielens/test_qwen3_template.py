"""The records jaxft builds under Qwen3's real chat template (tests/recipes/movielens/qwen3_chat_template.json)
against what that template renders, tokenized with the Qwen tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxft.recipes.movielens import encoding, prompts
from jaxft.recipes.movielens.infer import prompt_ids

FIXTURE = Path(__file__).with_name("qwen3_chat_template.json")


@pytest.fixture(scope="module")
def qwen3():
    from jaxft.tokenization.qwen import qwen_tokenizer

    tok = qwen_tokenizer()
    tok.chat_template = json.loads(FIXTURE.read_text(encoding="utf-8"))["chat_template"]
    return tok


RECORDS = [prompts.record([prompts.history_line(1, "Heat (1995)", 4.5), prompts.history_line(2, "Up (2009)", 3.0)],
                          "Alien (1979)", "Yes", 2),
           prompts.record([prompts.history_line(1, "Amélie (2001)", 2.0)], "Señor Avión (2004)", "No", 1)]


def test_the_fixture_is_qwen3s_template(qwen3):
    text = qwen3.chat_template
    assert "enable_thinking is defined and enable_thinking is false" in text and "ns.last_query_index" in text
    rendered = qwen3.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.mark.parametrize("index", [0, 1])
def test_ids_and_mask_match_the_rendered_template(qwen3, index):
    rec = RECORDS[index]
    enc = encoding.encode_record(qwen3, rec, cutoff_len=1024)
    messages = prompts.chat_messages(rec)
    # the whole conversation as the template renders it (the answer turn gets its think block: it
    # follows the last user query), tokenized as one text
    full = qwen3.apply_chat_template(messages, tokenize=False, enable_thinking=False)
    assert full.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n" + rec["output"] + "<|im_end|>\n")
    assert enc.input_ids.tolist() == qwen3(full.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    # the unmasked part is the generation prompt the template renders for inference
    generation = qwen3.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False)
    prompt = qwen3(generation, add_special_tokens=False)["input_ids"]
    assert enc.input_ids[:len(prompt)].tolist() == prompt and not enc.loss_mask[:len(prompt)].any()
    assert prompt_ids(qwen3, [rec])[0] == prompt  # infer generates from the same prompt
    # the loss covers the answer and <|im_end|>, nothing else; the answer position predicts the answer
    assert qwen3.decode(enc.input_ids[enc.loss_mask == 1]) == rec["output"] + "<|im_end|>"
    assert enc.answer_index == len(prompt) - 1
    yes, no = encoding.answer_token_ids(qwen3)
    assert enc.input_ids[enc.answer_index + 1] == (yes if rec["output"] == "Yes" else no)
    assert (qwen3.convert_ids_to_tokens([yes, no])) == ["Yes", "No"]
    assert np.flatnonzero(enc.loss_mask).tolist() == list(range(len(prompt), len(enc.input_ids)))
