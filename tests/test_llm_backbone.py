import importlib.util

import pytest
import torch
from safetensors import safe_open

from coea_cli.errors import BadInput
from coea_cli.llm.backbone import (
    add_lora,
    disable_cpu_bf16_repack,
    load_adapter,
    load_backbone,
    lora_target_modules,
    save_adapter,
)
from coea_cli.llm.prompts import novelty_prompt
from coea_cli.llm.train import train_novelty
from coea_cli.llm.vocab import add_sid_tokens
from tests.llm_fixtures import (
    DESCRIBE,
    SID,
    save_base,
    torch_one_thread,  # noqa: F401
)

PROJ = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(
    not HAS_BNB, reason="bitsandbytes is not installed (the plain install leaves it out)"
)


def _examples(n=8):
    return [
        (novelty_prompt(f"group {i}", [(i % 8,)], [], DESCRIBE), ((i + 1) % 8, i % 8))
        for i in range(n)
    ]


def _effective_rows(model, ids):
    """Input embedding rows and output-head rows as the model uses them."""
    ids = torch.as_tensor(ids)
    with torch.no_grad():
        inp = model.get_input_embeddings()(ids)
        head = model.get_output_embeddings()
        hidden = head.in_features if hasattr(head, "in_features") else inp.shape[1]
        out = head(torch.eye(hidden)).T[ids]
    return inp.clone(), out.clone()


def test_load_errors(tmp_path):
    with pytest.raises(BadInput, match=r"config\.json"):
        load_backbone(tmp_path / "nothing", device="cpu")
    base = save_base(tmp_path / "b")
    with pytest.raises(BadInput, match="quant"):
        load_backbone(base, quant="3bit", device="cpu")


@pytest.mark.parametrize("tied", [True, False])
def test_lora_step_trains_only_lora_and_new_rows(tmp_path, tied):
    model, tok = load_backbone(save_base(tmp_path / "b", tied=tied), quant="none", device="cpu")
    assert lora_target_modules(model) == PROJ
    old_rows = model.get_input_embeddings().weight.shape[0]
    ids = add_sid_tokens(model, tok, SID)
    all_ids = list(range(model.get_input_embeddings().weight.shape[0]))
    inp0, out0 = _effective_rows(model, all_ids)
    peft = add_lora(model, new_token_ids=ids, dropout=0.0)
    trainable = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in peft.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert sum("trainable_tokens" in n for n in trainable) == (1 if tied else 2)

    train_novelty(peft, tok, _examples(), epochs=1, batch_size=8, lr=1e-2)

    changed = {
        n for n, p in peft.named_parameters() if n in trainable and not torch.equal(p, trainable[n])
    }
    assert any("lora_B" in n for n in changed)
    assert any("trainable_tokens" in n for n in changed)
    assert all(torch.equal(p, frozen[n]) for n, p in peft.named_parameters() if n in frozen)
    inp1, out1 = _effective_rows(peft, all_ids)
    sid = torch.tensor(ids)
    other = torch.ones(len(all_ids), dtype=torch.bool)
    other[sid] = False
    assert old_rows <= min(ids)
    assert torch.equal(inp1[other], inp0[other])  # old tokens and padding rows unchanged
    assert torch.equal(out1[other], out0[other])
    used = torch.tensor(
        sorted(
            {
                t
                for _, c in _examples()
                for t in tok.convert_tokens_to_ids([f"<a_{c[0]}>", f"<b_{c[1]}>"])
            }
        )
    )
    assert not torch.equal(inp1[used], inp0[used])  # trained SID rows moved
    assert not torch.equal(out1[used], out0[used])


@pytest.mark.parametrize("tied", [True, False])
def test_adapter_round_trip(tmp_path, tied):
    base = save_base(tmp_path / "b", tied=tied)
    model, tok = load_backbone(base, quant="none", device="cpu")
    ids = add_sid_tokens(model, tok, SID, seed=5)
    peft = add_lora(model, new_token_ids=ids)
    train_novelty(peft, tok, _examples(), epochs=2, batch_size=4, lr=1e-2)
    peft.eval()
    out = save_adapter(peft, tmp_path / "adapter", tok)
    files = {p.name for p in out.iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("trainable_tokens" in k for k in keys)
    assert not any(k.endswith("embed_tokens.weight") for k in keys)  # rows only, not the matrix

    fresh, _ = load_backbone(base, quant="none", device="cpu")
    loaded, tok2 = load_adapter(fresh, out)
    assert tok2.convert_tokens_to_ids(SID) == ids
    rows = list(range(peft.get_input_embeddings().weight.shape[0]))
    for a, b in zip(_effective_rows(peft, rows), _effective_rows(loaded, rows), strict=True):
        assert torch.equal(a, b)
    x = torch.tensor([tok.encode(_examples()[3][0] + "<a_4><b_3>")])
    with torch.no_grad():
        assert torch.equal(peft(input_ids=x).logits, loaded(input_ids=x).logits)
    # saving again replaces the folder atomically
    save_adapter(loaded, out, tok2)
    assert (out / "adapter_model.safetensors").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".adapter")]


@pytest.mark.parametrize("tied", [True, False])
def test_inference_load_merges_the_adapter(tmp_path, tied):
    """load_model(trainable=False) merges LoRA and the trained token rows into the base: a
    plain model (no LoRA layers) whose logits equal the adapter model's."""
    from coea_cli.llm.models import LLMSpec, load_model

    base = save_base(tmp_path / "b", tied=tied)
    spec = LLMSpec(base, "none", "sdpa", 8, 32, "cpu", 5, tuple(SID))
    peft, tok = load_model(spec, None, True)
    train_novelty(peft, tok, _examples(), epochs=2, batch_size=4, lr=1e-2)
    peft.eval()
    out = save_adapter(peft, tmp_path / "adapter", tok)
    merged, tok2 = load_model(spec, out, False)
    unmerged, _ = load_model(spec, out, True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    x = torch.tensor([tok2.encode(_examples()[5][0] + "<a_4><b_3>")])
    unmerged.eval()
    with torch.no_grad():
        want, got = unmerged(input_ids=x).logits, merged(input_ids=x).logits
        with unmerged.disable_adapter():
            plain = unmerged(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert (plain - want).abs().max() > 1e-2  # the adapter changes the logits


def _lora_4bit(path, *, fix):
    """A 4-bit model with LoRA (nonzero B, so every LoRA matrix gets a gradient) and an input."""
    model, tok = load_backbone(path, quant="4bit", device="cpu")
    torch.manual_seed(1)
    peft = add_lora(model, dropout=0.0)
    with torch.no_grad():
        for i, (n, p) in enumerate(peft.named_parameters()):
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(i))
    if not fix:
        for m in peft.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = True
    return peft, torch.tensor([tok.encode("Film 3 (1953) Comedy <a_1><b_2><c_3>")])


def _eval_forward(peft, x):
    peft.eval()
    with torch.no_grad():
        peft(input_ids=x)


def _grads(peft, x):
    peft.train()
    peft(input_ids=x, labels=x).loss.backward()
    return {n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None}


def _packed(peft):
    mods = [m for m in peft.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    return [bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in mods]


@needs_bnb
def test_4bit_lora_grads_unaffected_by_eval_forward(tmp_path):
    from bitsandbytes.functional import has_avx512bf16

    base = save_base(tmp_path / "b", with_sid=True)
    model, _ = load_backbone(base, quant="4bit", device="cpu")
    assert disable_cpu_bf16_repack(model) == 2 * 7
    assert lora_target_modules(model) == PROJ

    ref = _grads(*_lora_4bit(base, fix=True))
    peft, x = _lora_4bit(base, fix=True)
    _eval_forward(peft, x)
    assert not any(_packed(peft))
    got = _grads(peft, x)
    assert len(ref) == 2 * 2 * 7 and ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    if not has_avx512bf16():
        return  # the repack only happens on CPUs with AVX512-BF16
    # without the fix the eval forward repacks, and training then fails or differs
    peft, x = _lora_4bit(base, fix=False)
    _eval_forward(peft, x)
    assert all(_packed(peft))
    try:
        bad = _grads(peft, x)
        assert not all(torch.equal(ref[k], bad[k]) for k in ref)
    except RuntimeError:
        pass
    # a repack already done is undone (its scales come back rounded: close, not equal)
    peft, x = _lora_4bit(base, fix=False)
    _eval_forward(peft, x)
    assert disable_cpu_bf16_repack(peft) == 2 * 7
    assert not any(_packed(peft))
    undone = _grads(peft, x)
    for k in ref:
        assert (undone[k] - ref[k]).norm() <= 2e-2 * ref[k].norm()


@needs_bnb
def test_8bit_lora_step(tmp_path):
    model, tok = load_backbone(save_base(tmp_path / "b", with_sid=True), quant="8bit", device="cpu")
    assert model.is_loaded_in_8bit and lora_target_modules(model) == PROJ
    peft = add_lora(model, dropout=0.0)
    m = train_novelty(peft, tok, _examples(4), epochs=1, batch_size=4, lr=1e-3)
    assert m["steps"] == 1 and m["loss_first_step"] > 0
    lora = [p for n, p in peft.named_parameters() if "lora_A" in n]
    assert lora and all(torch.isfinite(p).all() for p in lora)
