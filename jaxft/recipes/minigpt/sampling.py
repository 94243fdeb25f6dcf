"""The reference sampler as a ``SamplingConfig`` of ``jaxft.generate`` (one jitted loop)."""

from __future__ import annotations

from jaxft.sampling.config import SamplingConfig


def reference_sampling(cfg, tokenizer, *, temp: float = 0.6, top_p: float = 0.92, min_new: int = 40,
                       max_new: int = 120, rep_penalty: float = 1.2, no_repeat: int = 5) -> SamplingConfig:
    """Count penalty ln(rep_penalty)·count over prompt and output, temperature (<= 0: greedy), top-p, then the
    bans (the last ``no_repeat`` ids, EOS before ``min_new``) with renormalisation; stop at EOS or ``max_new``."""
    if max_new < 1:
        raise ValueError(f"--max-new must be >= 1, got {max_new}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if rep_penalty <= 0:
        raise ValueError(f"--rep-penalty must be > 0 (1 disables it), got {rep_penalty}")
    if no_repeat < 0 or min_new < 0:
        raise ValueError("--no-repeat and --min-new must be >= 0")
    if max_new >= cfg.max_position_embeddings:
        raise ValueError(f"--max-new {max_new} leaves no room for a prompt in the model's context of "
                         f"{cfg.max_position_embeddings} tokens")
    eos = tokenizer.eos_token_id
    return SamplingConfig(max_new_tokens=int(max_new), min_new_tokens=min(int(min_new), int(max_new)),
                          temperature=max(float(temp), 0.0), top_p=float(top_p), count_penalty=float(rep_penalty),
                          ban_recent=int(no_repeat), ban_after_top_p=True,
                          eos_token_ids=() if eos is None else (int(eos),),
                          pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
