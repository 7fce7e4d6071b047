import torch
from tiny_lm import make_model

from attribution.lm_data import IGNORE_INDEX, collate, encode_sft, prompt_text
from attribution.lm_loss import example_loss, forward_logits
from attribution.training import encode_records, finetune_causal_lm

REC = {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5.\nSo the answer is 5."}


def _response_text(tok, enc) -> str:
    ids = enc["input_ids"][enc["labels"] != IGNORE_INDEX]
    return tok.decode(ids, skip_special_tokens=True)


def test_plain_encoding_masks_prompt_and_maps_offsets(tokenizer):
    enc = encode_sft(tokenizer, REC, max_length=64, use_chat_template=False)
    n = enc["input_ids"].shape[0]
    assert all(enc[k].shape[0] == n for k in ("attention_mask", "labels", "offsets"))
    assert _response_text(tokenizer, enc) == REC["response"]
    assert enc["labels"][-1].item() == tokenizer.eos_token_id  # learns to stop
    # Offsets of the response tokens cover the response text exactly, in order.
    resp = enc["labels"] != IGNORE_INDEX
    spans = enc["offsets"][resp].tolist()
    assert "".join(REC["response"][a:b] for a, b in spans) == REC["response"]
    # The prompt tokens are exactly the generation prompt.
    n_prompt = int((~resp).sum())
    assert tokenizer.decode(enc["input_ids"][:n_prompt]) == prompt_text(tokenizer, REC, False)


def test_chat_template_used_when_present(chat_tokenizer):
    enc = encode_sft(chat_tokenizer, REC, max_length=96)
    text = chat_tokenizer.decode(enc["input_ids"])
    assert text.startswith("<|user|>\nWhat is 2 + 3?")
    assert "<|assistant|>\n" in text
    resp = enc["labels"] != IGNORE_INDEX
    spans = enc["offsets"][resp].tolist()
    assert "".join(REC["response"][a:b] for a, b in spans) == REC["response"]
    off = encode_sft(chat_tokenizer, REC, max_length=96, use_chat_template=False)
    assert not chat_tokenizer.decode(off["input_ids"]).startswith("<|user|>")


def test_messages_record_uses_last_assistant_turn(chat_tokenizer):
    rec = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
        ]
    }
    enc = encode_sft(chat_tokenizer, rec, max_length=64)
    assert _response_text(chat_tokenizer, enc).strip() == "Hello."
    assert "<|system|>" in chat_tokenizer.decode(enc["input_ids"])


def test_truncation_keeps_prompt_and_cuts_response(tokenizer):
    enc = encode_sft(tokenizer, REC, max_length=12, use_chat_template=False)
    assert enc["input_ids"].shape[0] == 12
    assert (enc["labels"] != IGNORE_INDEX).sum() >= 1
    padded = encode_sft(tokenizer, REC, max_length=80, use_chat_template=False, pad_to_max_length=True)
    assert padded["input_ids"].shape[0] == 80 and padded["attention_mask"].sum() < 80


def test_collate_pads_right_with_ignored_labels(tokenizer, records):
    items = encode_records(tokenizer, records[:3], 64)
    batch = collate(items, tokenizer.pad_token_id)
    lengths = [i["input_ids"].shape[0] for i in items]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == n


def _mean_loss(model, tok, records):
    batch = collate(encode_records(tok, records, 64), tok.pad_token_id)
    with torch.no_grad():
        return example_loss(forward_logits(model, batch), batch["labels"])


def test_finetune_lowers_response_loss_and_is_seeded(tokenizer, records):
    torch.set_num_threads(1)
    before = _mean_loss(make_model(tokenizer), tokenizer, records).mean()
    a = finetune_causal_lm(make_model(tokenizer), tokenizer, records, epochs=2, lr=3e-3, max_length=64)
    b = finetune_causal_lm(make_model(tokenizer), tokenizer, records, epochs=2, lr=3e-3, max_length=64)
    assert not a.training
    assert _mean_loss(a, tokenizer, records).mean() < before - 0.5
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_example_weights_zero_removes_examples(tokenizer, records):
    torch.set_num_threads(1)
    weights = [1.0 if r["domain"] == "math" else 0.0 for r in records]
    w = finetune_causal_lm(
        make_model(tokenizer), tokenizer, records, epochs=3, lr=3e-3, max_length=64, example_weights=weights
    )
    base = _mean_loss(make_model(tokenizer), tokenizer, records)
    after = _mean_loss(w, tokenizer, records)
    math = torch.tensor([r["domain"] == "math" for r in records])
    # Math (weight 1) is learnt much more than code (weight 0, learnt only through shared structure).
    assert (base[math] - after[math]).mean() > (base[~math] - after[~math]).mean() + 0.3
    ones = finetune_causal_lm(
        make_model(tokenizer), tokenizer, records, max_length=64, example_weights=[1.0] * len(records)
    )
    plain = finetune_causal_lm(make_model(tokenizer), tokenizer, records, max_length=64)
    for pa, pb in zip(ones.parameters(), plain.parameters()):
        assert torch.equal(pa, pb)
