import json

import torch

from coea_cli.llm.prompts import answer_token_ids
from coea_cli.llm.scratch import INFO_FILE, ScratchSpec, build_scratch_backbone
from tests.llm_fixtures import (
    DESCRIBE,
    SID,
    TEXTS,
    histories,
    torch_one_thread,  # noqa: F401
)


def test_scratch_backbone_loads_like_a_local_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calls = []
    texts = TEXTS + list(DESCRIBE.values())
    spec = ScratchSpec(
        hidden=32, layers=2, steps=40, vocab_size=350, heads=4, kv_heads=2, intermediate=64,
        seq_len=64, batch_size=8, lr=5e-3,
    )  # fmt: skip
    out = build_scratch_backbone(
        tmp_path / "backbone",
        spec,
        texts=texts,
        sid_sequences=histories(),
        sid_tokens=SID,
        progress=lambda s, t, loss: calls.append((s, t, loss)),
    )
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", INFO_FILE} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    # the reloaded tokenizer splits text exactly as the one trained
    from coea_cli.llm.scratch import build_tokenizer

    trained = build_tokenizer(texts, SID, vocab_size=350)
    sample = [*texts[:5], "Ünïcode café 1999\nnew line", histories(1)[0][:60]]
    assert [tok.encode(s) for s in sample] == [trained.encode(s) for s in sample]
    assert len(tok.encode("<a_3><b_1>")) == 2
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    yes, no = answer_token_ids(tok)
    assert [yes] == tok.encode(" Yes") and [no] == tok.encode(" No")

    info = json.loads((out / INFO_FILE).read_text())
    assert len(calls) == 40 and calls[-1][:2] == (40, 40)
    assert info["loss_last"] < 0.75 * info["loss_first"]
    assert info["tokens"]["sid"] > 0 and info["tokens"]["text"] > 0
    with torch.no_grad():
        x = torch.tensor([tok.encode(histories(1, seed=9)[0])])
        assert torch.isfinite(model(input_ids=x).logits).all()


def test_scratch_backbone_from_histories_only(tmp_path):
    spec = ScratchSpec(hidden=32, layers=1, steps=3, intermediate=64, seq_len=32, batch_size=4)
    out = build_scratch_backbone(
        tmp_path / "b", spec, texts=[], sid_sequences=histories(5), sid_tokens=SID
    )
    info = json.loads((out / INFO_FILE).read_text())
    assert info["tokens"]["text"] == 0 and info["tokens"]["sid"] > 0 and info["steps"] == 3
