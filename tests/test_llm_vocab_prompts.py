import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from coea_cli.errors import BadInput
from coea_cli.llm.prompts import (
    PromptLimits,
    answer_token_ids,
    load_templates,
    novelty_prompt,
    relevance_prompt,
)
from coea_cli.llm.vocab import add_sid_tokens, cluster_token_ids
from coea_cli.workspace.sids import SidLayout
from coea_cli.workspace.sids import cluster_token as cluster_to_text
from coea_cli.workspace.sids import parse_cluster as text_to_cluster
from tests.llm_fixtures import (
    DESCRIBE,
    SID,
    TEXTS,
    save_base,
    tokenizer,
    torch_one_thread,  # noqa: F401
)


def test_sid_tokens_names_and_order():
    assert SidLayout((3, 3)).tokens() == ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>", "<b_2>"]
    assert SidLayout((2, 1, 1)).tokens() == ["<a_0>", "<a_1>", "<b_0>", "<c_0>"]
    with pytest.raises(ValueError):
        SidLayout((4,))  # a layout has at least one level and the dedup level


@given(st.lists(st.integers(0, 4095), min_size=1, max_size=5))
def test_cluster_text_round_trip(codes):
    text = cluster_to_text(codes)
    assert text.count("<") == len(codes)
    assert text_to_cluster(text) == tuple(codes)


@pytest.mark.parametrize("bad", ["", "<b_1>", "<a_1>x", "<a_1><c_2>", "a_1", "<a_1> <b_2>"])
def test_text_to_cluster_rejects(bad):
    with pytest.raises(ValueError):
        text_to_cluster(bad)


def test_add_sid_tokens(tmp_path):
    from coea_cli.llm.backbone import load_backbone

    base = save_base(tmp_path / "base")
    model, tok = load_backbone(base, quant="none", device="cpu")
    rows_before = model.get_input_embeddings().weight.shape[0]
    assert rows_before % 64 != 0
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_sid_tokens(model, tok, SID, seed=3)
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tok)
    assert model.config.vocab_size == emb.shape[0]
    assert torch.equal(emb[:rows_before], old)
    assert len(set(ids)) == len(SID) and min(ids) >= rows_before
    assert tok.encode("<a_3><b_1>", add_special_tokens=False) == cluster_token_ids(tok, (3, 1))
    assert len(tok.encode("<a_3><b_1>", add_special_tokens=False)) == 2
    # new rows: mean of old rows plus small noise, distinct from each other
    new = emb[rows_before:]
    bound = 5 * 0.1 * old.std(0) / new.shape[0] ** 0.5
    assert ((new.mean(0) - old.mean(0)).abs() <= bound).all()
    assert torch.allclose(new.std(0), 0.1 * old.std(0), rtol=0.5)
    assert (new[0] - new[1]).abs().max() > 0
    # same base, tokens and seed -> same matrix; adding again is a no-op
    model2, tok2 = load_backbone(base, quant="none", device="cpu")
    assert add_sid_tokens(model2, tok2, SID, seed=3) == ids
    assert torch.equal(model2.get_input_embeddings().weight, emb)
    assert add_sid_tokens(model, tok, SID[:5], seed=3) == ids[:5]
    assert model.get_input_embeddings().weight.shape == emb.shape


def test_cluster_token_ids_unknown():
    with pytest.raises(KeyError):
        cluster_token_ids(tokenizer(True), (99,))


def test_templates_and_override(tmp_path):
    t = load_templates()
    assert set(t) == {"novelty", "relevance"}
    (tmp_path / "novelty.txt").write_text("P={persona} R={recent} F={familiar} ->\n")
    t2 = load_templates(tmp_path)
    assert t2["novelty"] == "P={persona} R={recent} F={familiar} ->"
    assert t2["relevance"] == t["relevance"]
    (tmp_path / "relevance.txt").write_text("{persona} {recent} {familiar} {cand}")
    with pytest.raises(BadInput, match=r"relevance\.txt"):
        load_templates(tmp_path)


def test_prompts_content_and_truncation():
    recent = [(i,) for i in range(8)]
    limits = PromptLimits(max_recent=3, max_familiar=2, max_desc_chars=12)
    p = novelty_prompt(
        "Students who love comedies", recent, [(1,), (2,), (3,)], DESCRIBE, limits=limits
    )
    assert "<a_4>" not in p and all(f"<a_{i}>" in p for i in (5, 6, 7))
    assert p.index("<a_5>") < p.index("<a_6>") < p.index("<a_7>")  # most recent last
    assert "Familiar (avoid): <a_2> <a_3>" in p
    assert "<a_7> Musical,...\n" in p  # description cut to 12 characters
    assert not p.endswith((" ", "\n"))
    r = relevance_prompt("x", [], [], (4,), lambda c: f"desc {c[0]}")
    assert "Candidate: <a_4> desc 4" in r and "Recent interests:\nnone" in r
    assert r.endswith("Answer:")


def test_prompt_length_and_answer_tokens():
    tok = tokenizer(True)
    recent = [(i % 8,) for i in range(20)]
    persona = " ".join(TEXTS)[:500]  # cut to max_persona_chars
    p = relevance_prompt(persona, recent, [(i % 8,) for i in range(40)], (1,), DESCRIBE)
    assert len(tok.encode(p)) < 256
    yes, no = answer_token_ids(tok)
    assert yes != no
    assert tok.encode(p + " Yes") == [*tok.encode(p), yes]
    assert tok.encode(p + " No") == [*tok.encode(p), no]
    n = novelty_prompt("persona", recent, [], DESCRIBE)
    assert tok.encode(n + "<a_3>") == tok.encode(n) + cluster_token_ids(tok, (3,))


def test_sid_rows_on_spare_embedding_rows_are_initialised(tmp_path):
    """A base whose embedding matrix has unused rows past its vocabulary (like Qwen2.5):
    the SID tokens land on those rows, which must get the documented initialisation (mean of
    the real vocabulary's rows plus small noise), not whatever the rows held."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer(False)
    n_vocab = len(tok)
    rows = -(-(n_vocab + len(SID) + 10) // 64) * 64  # spare rows for every SID token
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)  # fmt: skip
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_vocab:] = 50.0  # garbage in the spare rows
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)  # a private copy: the shared tokenizer stays unchanged
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = add_sid_tokens(model, tok, SID, seed=3)
    w = model.get_input_embeddings().weight.detach()
    assert w.shape[0] == rows  # no resize was needed
    assert min(ids) >= n_vocab and max(ids) < rows
    mean, std = w[:n_vocab].mean(0), w[:n_vocab].std(0)
    dev = (w[ids] - mean).abs()
    assert (dev <= 0.5 * std + 1e-6).all()  # noise of 0.1 std: far below 5 std
    assert not torch.isclose(w[ids], torch.full_like(w[ids], 50.0)).any()


def test_chat_template_backbones_get_chat_prompts(tmp_path):
    """A backbone whose tokenizer has a chat template gets each prompt as a user turn plus the
    start of the assistant's turn; the last line (the answer cue) stays last, so Yes/No are
    read off exactly as with plain prompts. Without a template prompts are unchanged."""
    import numpy as np

    from coea_cli.llm.context import Context, Prompter, World
    from coea_cli.workspace import History

    empty = np.zeros(0, np.int64)
    world = World(History(empty, empty, empty, empty, 1, 3, 1), np.array([0, 1, 2]), 3,
                  DESCRIBE, np.zeros(1, np.int64), {0: "night owls"})  # fmt: skip
    ctx = Context(0, "night owls", [(1,)], [(1,), (2,)])
    plain = tmp_path / "plain"
    save_base(plain)
    chat = tmp_path / "chat"
    save_base(chat)
    cfg = json.loads((chat / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (chat / "tokenizer_config.json").write_text(json.dumps(cfg))
    a, b = Prompter(world), Prompter(world, backbone=plain)
    assert a.relevance(ctx, (0,)) == b.relevance(ctx, (0,))  # no template: unchanged
    c = Prompter(world, backbone=chat)
    text = c.relevance(ctx, (0,))
    head, last = a.relevance(ctx, (0,)).rsplit("\n", 1)
    assert text == f"<|im_start|>user\n{head}<|im_end|>\n<|im_start|>assistant\n{last}"
    assert text.endswith("Answer:") and c.novelty(ctx).endswith("Next novel interest:")
