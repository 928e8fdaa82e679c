"""Tiny tokenizers and Qwen2 models built from config for the LLM-layer tests."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import pytest

from coea_cli.workspace.sids import SidLayout
from coea_cli.workspace.sids import cluster_token as cluster_to_text

SID = SidLayout((8, 8, 4)).tokens()
GENRES = ["Comedy", "Drama", "Action", "Romance", "Horror", "Sci-Fi", "Western", "Musical"]
TEXTS = [
    f"Film {i} ({1950 + i}) {GENRES[i % 8]}|{GENRES[(i * 3) % 8]}: a story of {GENRES[i % 5]}"
    for i in range(60)
]
DESCRIBE = {(i,): f"{GENRES[i]}, {GENRES[(i + 1) % 8]}: Film {i}; Film {i + 8}" for i in range(8)}


@pytest.fixture(autouse=True, scope="module")
def torch_one_thread():
    """Run a test module on one torch thread: tiny models are fastest that way, and a busy
    machine does not stall them on thread hand-offs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@lru_cache(maxsize=2)
def tokenizer(with_sid: bool = True):
    """Shared byte-level BPE tokenizer (read-only: do not add tokens to it)."""
    from coea_cli.llm.scratch import build_tokenizer

    return build_tokenizer(TEXTS, SID if with_sid else [], vocab_size=400)


def histories(n: int = 40, length: int = 12, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        "".join(
            cluster_to_text((rng.randrange(8), rng.randrange(8), rng.randrange(4)))
            for _ in range(length)
        )
        for _ in range(n)
    ]


def tiny_model(
    tok,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    tied: bool = True,
    embed_std: float | None = None,
):
    """A randomly initialised Qwen2 causal LM sized for ``tok`` (eval mode);
    ``embed_std`` overrides the embedding init scale."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,  # wider than the default 0.02: tiny models then learn quickly
        tie_word_embeddings=tied,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    if embed_std is not None:  # e.g. 1.0: larger logits, so distributions are far from uniform
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0, embed_std)
    return model.eval()


def save_base(path: Path, *, with_sid: bool = False, tied: bool = True, seed: int = 0) -> Path:
    """Save a tiny model + tokenizer as a local Hugging Face folder; returns ``path``."""
    tok = tokenizer(with_sid)
    tiny_model(tok, seed=seed, tied=tied).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
