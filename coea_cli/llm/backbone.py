"""Load a local causal LM (optionally 4/8-bit), attach LoRA, save and load adapters.

Adapters are written as safetensors with JSON beside them; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from coea_cli.errors import BadInput
from coea_cli.store import atomic_dir

QUANTS = ("4bit", "8bit", "none")
ADAPTER_INFO = "coea_adapter.json"
# Module types LoRA may wrap, by class name (bitsandbytes layers subclass nn.Linear).
_LINEAR_NAMES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")


def quant_config(quant: str, device: str):
    """BitsAndBytesConfig for ``quant`` (NF4 + double quantization for 4-bit), or None."""
    import torch
    from transformers import BitsAndBytesConfig

    if quant == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise BadInput(
            f"--quant {quant} needs bitsandbytes, which the plain install leaves out: "
            "pip install 'coea[cuda]' (or --quant none)"
        )
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device == "cuda" else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_backbone(
    path,
    *,
    quant: str | None = None,
    device: str,
    dtype=None,
    attn_implementation: str = "sdpa",
):
    """Load a local Hugging Face causal-LM folder; returns ``(model, tokenizer)``.

    ``quant``: ``4bit`` (NF4, double quantization), ``8bit`` or ``none``; None picks 4bit on CUDA
    and none on CPU. ``dtype`` defaults to bf16 on CUDA, fp32 on CPU. Remote code stays off and
    only local files are read. The model is returned in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_folder(path)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda (resolved by the caller), not {device!r}")
    quant = quant or ("4bit" if device == "cuda" else "none")
    if quant not in QUANTS:
        raise BadInput(f"--quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = dict(
        dtype=dtype,
        trust_remote_code=False,
        local_files_only=True,
        use_safetensors=True,
        attn_implementation=attn_implementation,
    )
    qc = quant_config(quant, device)
    if qc is not None:
        # the current CUDA device: under torchrun each rank's own (dist.init_distributed)
        where = torch.cuda.current_device() if device == "cuda" else "cpu"
        kwargs.update(quantization_config=qc, device_map={"": where})
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if qc is None:
        model.to(device)
    disable_cpu_bf16_repack(model)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=False, local_files_only=True
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def check_model_folder(path, option: str = "model") -> Path:
    """A local Hugging Face model folder with safetensors weights. Pickle checkpoints
    (pytorch_model.bin, *.pt) are never loaded, so a folder with only those is bad input."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise BadInput(f"{option} {path}: not a Hugging Face model folder (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise BadInput(
            f"{option} {path}: no *.safetensors weights (pickle checkpoints such as "
            "pytorch_model.bin are never loaded)"
        )
    return path


def disable_cpu_bf16_repack(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for AVX512-BF16 CPU inference.

    On such CPUs bitsandbytes repacks a ``Linear4bit`` weight on its first no-grad eval
    forward; training after that either fails (projections with a bias) or gets gradients that
    differ from an unpacked model's. This turns the repack off on every ``Linear4bit`` and
    undoes one already done (the undone weights keep bf16-rounded scales, so call this right
    after loading, as ``load_backbone`` does). Returns the number of modules patched.
    """
    patched = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
        patched += 1
    return patched


def is_quantized(model) -> bool:
    """True when the model was loaded in 4 or 8 bit."""
    return bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


def lora_target_modules(model) -> list[str]:
    """Names (last component) of the linear projections inside the transformer blocks.

    For Qwen2 and Llama: q, k, v, o, gate, up and down projections. The output head is excluded.
    """
    out = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is out or type(module).__name__ not in _LINEAR_NAMES:
            continue
        if ".layers." in f".{name}." or ".h." in f".{name}." or ".blocks." in f".{name}.":
            names.add(name.rsplit(".", 1)[-1])
    if not names:
        raise ValueError("no linear projections found inside the model's layers")
    return sorted(names)


def _embedding_names(model) -> tuple[str, str | None]:
    """Module names of the input embedding and, when not tied to it, the output head."""
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    tied = out is None or out.weight is inp.weight
    return names[id(inp)], None if tied else names[id(out)]


def add_lora(
    model,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    new_token_ids=None,
    gradient_checkpointing: bool = False,
):
    """Wrap ``model`` in a peft LoRA model on its attention and MLP projections.

    A quantized model is first prepared for k-bit training. When ``new_token_ids`` is given,
    those embedding rows (and the output-head rows of an untied head) are trained through peft's
    ``trainable_token_indices``; every other base weight stays frozen. ``dropout`` is 0: a
    round trains one epoch on a few hundred examples, and on CPU the dropout masks cost about
    a sixth of a step.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    tokens = None
    if new_token_ids:
        ids = sorted({int(i) for i in new_token_ids})
        emb_name, head_name = _embedding_names(model)
        tokens = ids if head_name is None else {emb_name: ids, head_name: ids}
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_modules(model),
        trainable_token_indices=tokens,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    disable_cpu_bf16_repack(peft_model)
    return peft_model


def save_adapter(model, out_dir, tokenizer=None) -> Path:
    """Save a peft model's adapter (safetensors + JSON) and, if given, its tokenizer.

    Also writes ``coea_adapter.json`` with the embedding row count and the seed that
    ``vocab.resize_embeddings`` used (recorded on the model), so ``load_adapter`` rebuilds the same base matrix. The folder
    is replaced atomically.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        rows = model.get_input_embeddings().weight.shape[0]
        seed = getattr(model, "coea_resize_seed", 0)
        info = {"embedding_rows": int(rows), "resize_seed": int(seed)}
        (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2))
    return out_dir


def load_adapter(base, adapter_dir, *, is_trainable: bool = False):
    """Attach a saved adapter to a freshly loaded base model; returns ``(model, tokenizer)``.

    The base embeddings are first grown to the saved row count (same deterministic init as when
    the adapter was trained), then the LoRA weights and trained token rows are loaded from
    safetensors. The tokenizer is the one saved beside the adapter (None if none was saved).
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from coea_cli.llm.vocab import resize_embeddings

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise BadInput(f"{adapter_dir}: no adapter_model.safetensors")
    info_path = adapter_dir / ADAPTER_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if "embedding_rows" in info:
        resize_embeddings(base, info["embedding_rows"], seed=info.get("resize_seed", 0))
    if is_trainable and is_quantized(base):
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    disable_cpu_bf16_repack(model)
    if not is_trainable:
        model.eval()
    tokenizer = None
    if (adapter_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(
            str(adapter_dir), trust_remote_code=False, local_files_only=True
        )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
