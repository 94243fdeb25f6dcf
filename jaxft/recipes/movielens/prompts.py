"""The task's texts: system prompt, instruction, the user-turn layout and the chat messages.

The wording is the reference project's (AgenticRecommender ``finetune/``), kept verbatim because a
model trained on one wording is scored on the same wording by ``compare``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SYSTEM_PROMPT = (
    "You are a movie recommendation assistant. Given a user's recent history "
    "and a candidate movie. Please begin your analysis with 'Yes' or 'No'."
)
INSTRUCTION = "Predict whether the user will like the candidate movie. Answer only with Yes or No."
QUESTION = "Should we recommend this movie to the user? Answer Yes or No."
POSITIVE, NEGATIVE = "Yes", "No"


def history_line(position: int, title: str, rating: float) -> str:
    """One numbered history entry, e.g. ``3. Heat (1995) (rating ≈ 4.5)``."""
    return f"{position}. {title} (rating ≈ {rating:.1f})"


def user_input(history_titles: Sequence[str], candidate_title: str, history_len: int) -> str:
    """The record's ``input``: the numbered history, the candidate, the question."""
    history = "\n".join(history_titles)
    return (f"User's last {history_len} watched movies:\n{history}\n\n"
            f"Candidate movie:\n{candidate_title}\n\n{QUESTION}")


def label_for(rating: float, threshold: float) -> str:
    return POSITIVE if rating >= threshold else NEGATIVE


def record(history_titles: Sequence[str], candidate_title: str, label: str, history_len: int,
           instruction: str = INSTRUCTION, system: str = SYSTEM_PROMPT) -> dict:
    """A training record in the Alpaca layout the reference wrote (``history`` holds no earlier turns)."""
    return {"instruction": instruction, "input": user_input(history_titles, candidate_title, history_len),
            "output": label, "system": system, "history": []}


def chat_messages(rec: Mapping[str, str], *, with_answer: bool = True) -> list[dict[str, str]]:
    """system, user = instruction + blank line + input, and (``with_answer``) the assistant's answer."""
    messages = []
    if rec.get("system"):
        messages.append({"role": "system", "content": rec["system"]})
    user = rec.get("instruction", "")
    if rec.get("input"):
        user = f"{user}\n\n{rec['input']}"
    messages.append({"role": "user", "content": user})
    if with_answer:
        messages.append({"role": "assistant", "content": rec.get("output", "")})
    return messages


def test_row_record(row: Mapping, instruction: str = INSTRUCTION, system: str = SYSTEM_PROMPT) -> dict:
    """A ``test_raw.jsonl`` row as the record the model was trained on (same prompt, same system)."""
    titles = list(row["history_titles"])
    return record(titles, row["candidate_title"], row["label"], len(titles), instruction, system)
