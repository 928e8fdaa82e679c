"""The "coea_triton" transformers attention implementation against "eager" and SDPA.

The Qwen2 logits check also runs on CUDA (selected by -m cuda; skipped without a GPU)."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")  # before anything imports transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # noqa: E402
from transformers.masking_utils import sdpa_mask  # noqa: E402

import coea_kernels.hf as hf  # noqa: E402
from coea_kernels.attention import has_triton  # noqa: E402

if has_triton():
    from coea_kernels import triton_attention as ta

ATOL = 1e-4  # fp32 logits
SEQ_LEN = 13
LENGTHS = [13, 6, 1]


def _backend() -> str:
    if not has_triton():
        return "torch"
    return "triton" if torch.cuda.is_available() or ta.INTERPRET else "torch"


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def _qwen2_config(**extra):
    return Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, initializer_range=0.2, **extra,
    )  # fmt: skip


def _pair(config, backend=None, device=None):
    """The same random weights under "eager" and under "coea_triton"."""
    torch.manual_seed(0)
    # Each model gets its own config: the attention implementation is stored on it.
    eager = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    ours = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=hf.NAME)
    assert eager.config._attn_implementation == "eager"
    ours.load_state_dict(eager.state_dict())
    ours.config.coea_attention_backend = backend or _backend()
    device = device or _device()
    return eager.to(device).eval(), ours.to(device).eval()


def _batch(padding, seed=1, device=None):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 128, (len(LENGTHS), SEQ_LEN), generator=gen)
    pos = torch.arange(SEQ_LEN)
    n = torch.tensor(LENGTHS)[:, None]
    mask = pos[None] < n if padding == "right" else pos[None] >= SEQ_LEN - n
    device = device or _device()
    return ids.to(device), mask.long().to(device)


def _count_kernel_calls(monkeypatch):
    calls = []
    original = hf.attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("padding"))
        return original(*args, **kwargs)

    monkeypatch.setattr(hf, "attention", spy)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding", ["left", "right"])
def test_qwen2_logits_match_eager(padding, device, monkeypatch):
    eager, ours = _pair(_qwen2_config(), device=device)
    ids, mask = _batch(padding, device=device)
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    assert calls == [padding, padding]  # both layers ran the kernel with lengths
    valid = mask.bool()
    assert want.abs().max() > 0.1
    assert (got - want)[valid].abs().max() < ATOL


def test_qwen2_greedy_generate_matches_eager(monkeypatch):
    eager, ours = _pair(_qwen2_config())
    ids, mask = _batch("left", seed=2)
    calls = _count_kernel_calls(monkeypatch)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    want = eager.generate(input_ids=ids, attention_mask=mask, **kwargs)
    got = ours.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert got.shape == (len(LENGTHS), SEQ_LEN + 4)
    assert torch.equal(got, want)
    assert calls.count("left") == 2  # the prefill; decoding steps take the reference path


def test_llama_and_torch_backend_match_eager():
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=128, initializer_range=0.2,
    )  # fmt: skip
    for backend in (_backend(), "torch"):
        eager, ours = _pair(config, backend)
        ids, mask = _batch("right")
        with torch.no_grad():
            want = eager(input_ids=ids, attention_mask=mask).logits
            got = ours(input_ids=ids, attention_mask=mask).logits
        assert (got - want)[mask.bool()].abs().max() < ATOL


def test_sliding_window_falls_back_to_reference(monkeypatch):
    config = _qwen2_config(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    eager, ours = _pair(config)
    ids, mask = _batch("right")
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask).logits
    assert calls == []  # a sliding-window mask is not causal + padding
    assert (got - want)[mask.bool()].abs().max() < ATOL


def test_padding_from_mask():
    pos = torch.arange(6)
    n = torch.tensor([6, 3, 0])
    for padding, keys in (("right", pos[None] < n[:, None]), ("left", pos[None] >= 6 - n[:, None])):
        mask = sdpa_mask(3, 6, 6, attention_mask=keys, allow_is_causal_skip=False)
        lengths, found = hf.padding_from_mask(mask, causal=True)
        assert found == padding and lengths.tolist() == [6, 3, 0]
        assert hf.padding_from_mask(mask, causal=False) is None
        full = keys[:, None, None, :].expand(3, 1, 6, 6)
        assert hf.padding_from_mask(full, causal=False)[1] == padding
    gaps = torch.tensor([[True, False, True, True, True, True]])
    mask = sdpa_mask(1, 6, 6, attention_mask=gaps, allow_is_causal_skip=False)
    assert hf.padding_from_mask(mask, causal=True) is None
    assert hf.padding_from_mask(mask.float(), causal=True) is None


def test_register_is_idempotent():
    from transformers import AttentionInterface, AttentionMaskInterface

    hf.register()
    hf.register()
    assert AttentionInterface._global_mapping[hf.NAME] is hf.coea_attention_forward
    assert AttentionMaskInterface._global_mapping[hf.NAME] is sdpa_mask


def _module(causal=True):
    module = torch.nn.Module().eval()
    module.is_causal = causal
    module.config = SimpleNamespace(coea_attention_backend=_backend())
    return module


def _qkv(batch, q_len, k_len, seed=4):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 4, q_len, 16, generator=gen)
    k = torch.randn(batch, 2, k_len, 16, generator=gen)
    v = torch.randn(batch, 2, k_len, 16, generator=gen)
    return q, k, v


def _sdpa(q, k, v, mask):
    """SDPA with a mask broadcastable to [B, H, Lq, Lk] (fully masked rows give NaN)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    return out.transpose(1, 2)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_2d_padding_mask_matches_sdpa(padding, monkeypatch):
    """A [B, L] 0/1 padding mask means causal attention over the valid keys of each row; it
    reaches the kernel with lengths (not broadcast as a [Lq, Lk] mask)."""
    seq_len, lengths = 11, torch.tensor([11, 5, 0])
    pos = torch.arange(seq_len)
    keys = (
        pos[None] < lengths[:, None] if padding == "right" else pos[None] >= 11 - lengths[:, None]
    )
    q, k, v = _qkv(3, seq_len, seq_len)
    calls = _count_kernel_calls(monkeypatch)
    got, _ = hf.coea_attention_forward(_module(), q, k, v, keys.long(), scaling=0.25)
    assert calls == [padding]
    causal = pos[None, :] <= pos[:, None]
    want = _sdpa(q, k, v, keys[:, None, None, :] & causal)
    assert torch.isfinite(got).all()
    assert (got[~keys] == 0).all()  # padded queries (and the empty row) output 0
    assert (got - want)[keys].abs().max() < 1e-5
    # Decoding with a KV cache: one query sees every valid key; the reference path.
    q1 = q[:, :, -1:]
    got, _ = hf.coea_attention_forward(_module(), q1, k, v, keys.long(), scaling=0.25)
    want = _sdpa(q1, k, v, keys[:, None, None, :])
    assert calls == [padding]
    rows = keys.any(dim=1)
    assert (got - want)[rows].abs().max() < 1e-5 and (got[~rows] == 0).all()
    # A float 2-D mask is added to the scores.
    bias = torch.randn(3, seq_len, generator=torch.Generator().manual_seed(5))
    got, _ = hf.coea_attention_forward(_module(causal=False), q, k, v, bias, scaling=0.25)
    assert (got - _sdpa(q, k, v, bias[:, None, None, :])).abs().max() < 1e-5


def test_batch_broadcast_mask_falls_back_to_sdpa(monkeypatch):
    """A [1, 1, L, L] mask shared by the batch runs the reference path with that mask."""
    seq_len = 9
    q, k, v = _qkv(3, seq_len, seq_len)
    pos = torch.arange(seq_len)
    calls = _count_kernel_calls(monkeypatch)
    for mask in (
        (pos[None, :] <= pos[:, None])[None, None],  # plain causal, shared
        (pos[None, :] <= pos[:, None])[None, None] & (pos >= 2),  # left padding, shared
    ):
        got, _ = hf.coea_attention_forward(_module(), q, k, v, mask, scaling=0.25)
        want = _sdpa(q, k, v, mask)
        rows = mask[0, 0].any(dim=-1)
        assert (got - want)[:, rows].abs().max() < 1e-5 and (got[:, ~rows] == 0).all()
    assert calls == []
