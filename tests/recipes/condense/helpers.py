"""Tiny models, tokenizers and batches shared by the condense tests (one model shape, so compiled
programs are shared between tests)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxft import lora as lora_lib
from jaxft.models.config import DecoderConfig
from jaxft.models.init import init_params
from jaxft.recipes.condense import model as model_lib

WORDS = "the cat sat on mat a dog ran far away and then slept".split()
ENC_VOCAB, DEC_VOCAB = 16, 259  # the word tokenizer's 14 tokens fit; the byte tokenizer has 259
N, SEG_LEN, SEGMENTS = 2, 4, 4


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace-split words; offsets exclude the spaces."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>"] + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def byte_tokenizer():
    from jaxft.tokenization.demo import demo_tokenizer

    return demo_tokenizer("byte")  # no training: one token per byte, offsets include spaces


def tiny_cfg(model_type: str, vocab: int, hidden: int = 64) -> DecoderConfig:
    return DecoderConfig.from_hf(dict(model_type=model_type, vocab_size=vocab, hidden_size=hidden,
                                      intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                                      eos_token_id=2, pad_token_id=0))


@functools.cache
def tiny_condenser(projector: str = "reference", decoder_std: float = 0.3, seed: int = 0):
    """(model, trainable, frozen) with a LoRA'd random encoder and a frozen random decoder.

    The decoder's larger init std makes its outputs react to its inputs, as a trained decoder's
    do; at 0.02 its logits hardly move whatever it reads. Built once per process (tests never
    modify the trees).
    """
    enc, dec = tiny_cfg("llama", ENC_VOCAB), tiny_cfg("mistral", DEC_VOCAB)
    lora_config = lora_lib.LoraConfig(rank=8, alpha=8.0)
    model = model_lib.CondenseModel(enc, dec, num_condense_tokens=N, segment_length=SEG_LEN, lora_config=lora_config,
                                    projector=projector)

    @jax.jit  # one compile instead of one per eager random op
    def trees(key):
        keys = jax.random.split(key, 5)
        enc_params = init_params(enc, keys[0])
        adapters = lora_lib.init(keys[1], enc, enc_params, rank=lora_config.rank, alpha=lora_config.alpha)
        # b = 0 would make the LoRA a no-op; random b makes the adapters matter in every test.
        lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(keys[4], x.shape), adapters.params)
        trainable = {"lora": lora, **model_lib.init_params(keys[2], model, 0.3)}
        return trainable, {"encoder": enc_params, "decoder": init_params(dec, keys[3], std=decoder_std)}

    trainable, frozen = trees(jax.random.key(seed))
    return model, trainable, frozen


def random_batch(rs, b=1, s=SEGMENTS, d=12, c=5, p=0):
    batch = dict(enc_ids=rs.randint(3, ENC_VOCAB, (b, s, SEG_LEN)).astype(np.int32),
                 enc_mask=np.ones((b, s, SEG_LEN), bool),
                 dec_ids=rs.randint(3, DEC_VOCAB, (b, d)).astype(np.int32), dec_mask=np.ones((b, d), bool),
                 cont_ids=rs.randint(3, DEC_VOCAB, (b, s, c)).astype(np.int32),
                 cont_mask=np.ones((b, s, c), bool))
    if p:
        batch.update(ins_ids=rs.randint(3, DEC_VOCAB, (b, p)).astype(np.int32), ins_mask=np.ones((b, p), bool),
                     ins_loss=np.zeros((b, p), bool))
    return batch


def states_of(model, trainable, frozen, batch) -> jnp.ndarray:
    return model_lib.condense_jit(model, trainable, frozen, jnp.asarray(batch["enc_ids"]),
                                  jnp.asarray(batch["enc_mask"]))


def nll_mean(logits: jnp.ndarray, targets: np.ndarray) -> float:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return float(-jnp.mean(jnp.take_along_axis(logp, jnp.asarray(targets)[:, None], axis=-1)))
