"""The offline backbone: a byte-level BPE tokenizer and a small Qwen2 model trained from the
workspace's own text and SID corpus, saved in Hugging Face format."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|endoftext|>"
INFO_FILE = "coea_scratch.json"


def build_tokenizer(texts: Sequence[str], sid_tokens: Sequence[str], *, vocab_size: int = 4096):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers tokenizer.

    Pre-tokenization is exactly Qwen2's (NFC, Qwen2 split regex, byte level), because
    ``AutoTokenizer`` rebuilds any tokenizer saved beside a Qwen2 config with that pipeline. SID
    tokens are added tokens (one token each); pad, bos and eos are special tokens; the answers
    " Yes" and " No" are weighted so that each is one token. Nothing is added automatically
    around encoded text.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from coea_cli.llm.prompts import ANSWER_PROBE, load_templates

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    answers = [f"{ANSWER_PROBE} Yes\n{ANSWER_PROBE} No"] * max(200, len(texts))
    corpus = [*texts, *load_templates().values(), *answers]
    tok.train_from_iterator(corpus, trainer, length=len(corpus))
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in sid_tokens])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=EOS
    )
    wrapped.padding_side = "left"
    return wrapped


def _stream(tokenizer, docs: Sequence[str]) -> list[int]:
    """All documents' ids, each followed by eos, in one list."""
    eos = tokenizer.eos_token_id
    out: list[int] = []
    if not docs:
        return out
    for ids in tokenizer(list(docs), add_special_tokens=False)["input_ids"]:
        out.extend(ids)
        out.append(eos)
    return out


def _windows(stream, n: int, seq_len: int, gen):
    """``n`` random windows of ``seq_len`` tokens from a 1-D tensor (tiled if too short)."""
    import torch

    if stream.numel() < seq_len + 1:
        stream = stream.repeat(math.ceil((seq_len + 1) / max(stream.numel(), 1)))
    starts = torch.randint(0, stream.numel() - seq_len + 1, (n,), generator=gen)
    return torch.stack([stream[s : s + seq_len] for s in starts.tolist()])


@dataclass(frozen=True)
class ScratchSpec:
    """Size and pre-training of the scratch backbone. hidden, layers and steps come from
    `pco-round --backbone-*` (their defaults are defined there)."""

    hidden: int
    layers: int
    steps: int
    vocab_size: int = 4096
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    max_positions: int = 1024
    seq_len: int = 192  # longer than the prompts (at most about 140 tokens on MovieLens-100K)
    batch_size: int = 16
    lr: float = 2e-3
    text_fraction: float = 0.3  # share of each batch drawn from the text stream
    seed: int = 0


def build_scratch_backbone(
    out_dir,
    spec: ScratchSpec,
    *,
    texts: Sequence[str],
    sid_sequences: Sequence[str],
    sid_tokens: Sequence[str],
    progress: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Build, pre-train and save the scratch backbone; returns ``out_dir``.

    ``texts``: item texts, cluster descriptions, personas (the prompt templates are added).
    ``sid_sequences``: users' histories as SID token strings. The folder holds config,
    safetensors weights, tokenizer and ``coea_scratch.json`` (sizes, tokens, time, losses),
    is written atomically and loads with AutoModelForCausalLM/AutoTokenizer.
    """
    import torch

    from coea_cli.llm.prompts import answer_token_ids

    if not texts and not sid_sequences:
        raise ValueError("need texts or SID sequences to train the scratch backbone on")
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer(texts, sid_tokens, vocab_size=spec.vocab_size)
    answer_token_ids(tokenizer)  # fails early if Yes/No are not distinct first tokens
    model = _model(spec, tokenizer)
    text_ids = torch.tensor(_stream(tokenizer, texts), dtype=torch.long)
    sid_ids = torch.tensor(_stream(tokenizer, sid_sequences), dtype=torch.long)
    losses = pretrain(model, text_ids, sid_ids, spec, progress)
    info = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
        "tokens": {"text": text_ids.numel(), "sid": sid_ids.numel()},
        "steps": spec.steps,
        "seq_len": spec.seq_len,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "seconds": round(time.perf_counter() - t0, 2),
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
    }
    _save(Path(out_dir), model, tokenizer, info)
    return Path(out_dir)


def _model(spec: ScratchSpec, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def pretrain(model, text_ids, sid_ids, spec: ScratchSpec, progress=None) -> list[float]:
    """Next-token prediction: each step draws ``batch_size`` windows of ``seq_len`` tokens, a
    ``text_fraction`` share from the text stream and the rest from the history stream (AdamW,
    warmup then cosine decay to 10%). Returns the loss of every step."""
    import torch

    has_text, has_sid = text_ids.numel() > 0, sid_ids.numel() > 0
    if not has_text:
        n_text = 0
    elif not has_sid:
        n_text = spec.batch_size
    else:
        n_text = min(spec.batch_size, max(1, round(spec.batch_size * spec.text_fraction)))
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, spec.steps - warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses = []
    for step in range(spec.steps):
        parts = []
        if n_text:
            parts.append(_windows(text_ids, n_text, spec.seq_len, gen))
        if spec.batch_size - n_text:
            parts.append(_windows(sid_ids, spec.batch_size - n_text, spec.seq_len, gen))
        batch = torch.cat(parts)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, spec.steps, losses[-1])
    model.eval()
    return losses


def _save(out_dir: Path, model, tokenizer, info: dict) -> None:
    """config, weights, tokenizer and coea_scratch.json, swapped in atomically."""
    from transformers import GenerationConfig

    from coea_cli.store import atomic_dir

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
