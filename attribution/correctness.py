"""Which targets does the model answer correctly? (Infra keeps only those in the target function.)

Greedy generation from the SFT prompt; a target is correct when its reference `answer` (math) is
verified equal to the generation's by math-verify, or, without an answer, when the generation equals
the reference response up to whitespace. Ours: the paper does not specify its correctness check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attribution.lm_data import prompt_text, split_record


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def matches(generated: str, record: dict) -> bool:
    answer = record.get("answer")
    if answer is not None and str(answer).strip():
        import logging

        from math_verify import parse, verify

        logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" on every call

        # Timeouts off: math-verify's alarm-based timeout fails off the main thread; the inputs here
        # are one short generation each.
        gold = parse(str(answer), parsing_timeout=None)
        pred = parse(generated, parsing_timeout=None)
        if gold and pred and verify(gold, pred, timeout_seconds=None):
            return True
        lines = [line for line in generated.splitlines() if line.strip()]
        # math-verify found nothing comparable: the answer as a whole token of the last line
        pattern = rf"(?<![\w.]){re.escape(str(answer).strip())}(?![\w])"
        return bool(lines) and re.search(pattern, lines[-1]) is not None
    return _same_text(generated, split_record(record)[1])


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict],
    max_new_tokens: int = 256,
    use_chat_template: bool | None = None,
) -> list[str]:
    """Greedy completions, one record at a time (no padding subtleties; targets are few)."""
    device = next(model.parameters()).device
    out = []
    for rec in records:
        ids = tokenizer(
            prompt_text(tokenizer, rec, use_chat_template), add_special_tokens=False, return_tensors="pt"
        )["input_ids"].to(device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
    return out


def correct_mask(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict],
    max_new_tokens: int = 256,
    use_chat_template: bool | None = None,
) -> list[bool]:
    generated = generate(model, tokenizer, records, max_new_tokens, use_chat_template)
    return [matches(g, r) for g, r in zip(generated, records, strict=True)]


def correct_targets(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict],
    max_new_tokens: int = 256,
    use_chat_template: bool | None = None,
) -> list[dict]:
    """The records the model answers correctly; none is an error (f would be an empty sum)."""
    records = list(records)
    keep = correct_mask(model, tokenizer, records, max_new_tokens, use_chat_template)
    kept = [r for r, ok in zip(records, keep, strict=True) if ok]
    if not kept:
        raise ValueError(f"only_correct: the model answers none of the {len(records)} targets correctly")
    return kept
