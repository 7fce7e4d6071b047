"""Supervised fine-tuning (SFT) encoding for causal LMs: prompt tokens masked, loss on response tokens.

One record is `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}` whose
last assistant message is the response. The same encoding is used for training, for influence
(kronfluence / traker tasks) and for generation prompts (`prompt_text`), so the three always agree.
"""

from __future__ import annotations

import json
from typing import Any

import torch

IGNORE_INDEX = -100


def split_record(record: dict) -> tuple[list[dict], str]:
    """(conversation before the response, response) of a record, as chat messages."""
    messages = record.get("messages")
    if isinstance(messages, str):
        messages = json.loads(messages) if messages.strip() else None
    if messages is not None and not isinstance(messages, list):  # a numpy array from a lake table
        messages = list(messages)
    if messages:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise ValueError("record's messages hold no assistant message to use as the response")
        return [dict(m) for m in messages[:last]], str(messages[last]["content"])
    if "prompt" not in record or "response" not in record:
        raise ValueError("a record needs 'prompt' and 'response', or 'messages'")
    return [{"role": "user", "content": str(record["prompt"])}], str(record["response"])


def _uses_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template and not has:
        raise ValueError("use_chat_template=True but the tokenizer has no chat template")
    return has if use_chat_template is None else bool(use_chat_template)


def _plain_prompt(context: list[dict]) -> str:
    # Without a chat template the prompt is the conversation's contents, one per line; the response
    # follows directly (the prompt ends with a newline so the boundary is a token boundary).
    text = "\n".join(str(m["content"]) for m in context)
    return text if not text or text.endswith("\n") else text + "\n"


def _render(tokenizer: Any, record: dict, use_chat_template: bool | None) -> tuple[str, str, int]:
    """(prompt text, completion text, index of the response inside the completion text)."""
    context, response = split_record(record)
    if not _uses_template(tokenizer, use_chat_template):
        return _plain_prompt(context), response, 0
    prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        context + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        # Some templates render the generation prompt differently from a finished turn; fall back to
        # cutting the full text just before the response.
        cut = full.rfind(response)
        if cut < 0:
            raise ValueError("chat template does not contain the response text verbatim")
        prompt = full[:cut]
    completion = full[len(prompt) :]
    start = completion.find(response)
    return prompt, completion, max(start, 0)


def prompt_text(tokenizer: Any, record: dict, use_chat_template: bool | None = None) -> str:
    """The exact text a model fine-tuned with `encode_sft` should be prompted with to answer `record`."""
    return _render(tokenizer, record, use_chat_template)[0]


def _ids_and_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode_sft(
    tokenizer: Any,
    record: dict,
    max_length: int,
    use_chat_template: bool | None = None,
    pad_to_max_length: bool = False,
) -> dict[str, torch.Tensor]:
    """Encode one record for SFT.

    Returns 1-D tensors `input_ids`, `attention_mask`, `labels` (IGNORE_INDEX on prompt tokens and
    padding) and `offsets` (n_tokens x 2): for each position, the character span of that token inside
    the *response text* ((0, 0) for prompt / padding / template tokens outside the response). The
    prompt is kept whole where it fits; the response is cut at the end when the total exceeds
    `max_length`; an over-long prompt is cut from the left so that at least one response token remains.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    prompt, completion, resp_start = _render(tokenizer, record, use_chat_template)
    _, response = split_record(record)
    p_ids, _ = _ids_and_offsets(tokenizer, prompt)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not p_ids or p_ids[0] != bos):
        p_ids = [bos] + p_ids
    c_ids, c_off = _ids_and_offsets(tokenizer, completion)
    eos = getattr(tokenizer, "eos_token_id", None)
    # A chat template ends the turn itself; plain prompt/response pairs end with eos so that the
    # model learns to stop.
    if (
        not _uses_template(tokenizer, use_chat_template)
        and eos is not None
        and (not c_ids or c_ids[-1] != eos)
    ):
        c_ids, c_off = c_ids + [eos], c_off + [(len(completion), len(completion))]
    # Offsets relative to the response text, clipped: template tokens around it get empty spans.
    r_end = resp_start + len(response)
    r_off = [
        (min(max(a, resp_start), r_end) - resp_start, min(max(b, resp_start), r_end) - resp_start)
        for a, b in c_off
    ]

    p_ids = p_ids[-(max_length - 1) :] if len(p_ids) >= max_length else p_ids
    keep = max_length - len(p_ids)
    c_ids, r_off = c_ids[:keep], r_off[:keep]
    n = len(p_ids) + len(c_ids)
    input_ids = torch.tensor(p_ids + c_ids, dtype=torch.long)
    labels = torch.tensor([IGNORE_INDEX] * len(p_ids) + c_ids, dtype=torch.long)
    offsets = torch.tensor([(0, 0)] * len(p_ids) + r_off, dtype=torch.long).reshape(n, 2)
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.ones(n, dtype=torch.long),
        "labels": labels,
        "offsets": offsets,
    }
    if pad_to_max_length and n < max_length:
        out = _pad(out, max_length, pad_id(tokenizer))
    return out


def pad_id(tokenizer: Any) -> int:
    """A usable pad id: the tokenizer's pad, else its eos, else 0 (padding is masked either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _pad(item: dict[str, torch.Tensor], length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    extra = length - item["input_ids"].shape[0]
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    out = {}
    for key, value in item.items():
        if key == "offsets":
            out[key] = torch.cat([value, torch.zeros(extra, 2, dtype=value.dtype)])
        elif key in fill:
            out[key] = torch.cat([value, torch.full((extra,), fill[key], dtype=value.dtype)])
        else:
            out[key] = value
    return out


def collate(batch: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded records to the longest in the batch and stack them."""
    length = max(item["input_ids"].shape[0] for item in batch)
    padded = [_pad(item, length, pad_token_id) for item in batch]
    return {
        key: torch.stack([p[key] for p in padded])
        for key in padded[0]
        if isinstance(padded[0][key], torch.Tensor)
    }


def response_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next-token prediction* is scored: label at position t+1 is not ignored.

    Causal LMs predict token t+1 from position t; the loss of response token t+1 lives at position t.
    """
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., :-1] = labels[..., 1:] != IGNORE_INDEX
    return mask


def load_tokenizer(model_dir: Any) -> Any:
    """The tokenizer of a Hugging Face directory, exactly as it was saved.

    transformers 5's `AutoTokenizer` picks the class from the model's config (Qwen2Tokenizer for a
    Qwen2 model) and swaps in that class's pre-tokenizer (digits split one by one). A directory whose
    tokenizer_config names the generic backend (a locally trained tokenizer, such as the reference
    model's) is therefore loaded from its tokenizer.json, so text encodes as it did in training.
    """
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(model_dir)
    config = path / "tokenizer_config.json"
    saved_class = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if (
        saved_class in ("TokenizersBackend", "PreTrainedTokenizerFast")
        and (path / "tokenizer.json").is_file()
    ):
        return PreTrainedTokenizerFast.from_pretrained(path)
    return AutoTokenizer.from_pretrained(path)
