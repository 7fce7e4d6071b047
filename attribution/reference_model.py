"""A small causal LM built offline: a tokenizer trained locally and a Qwen2-architecture model from
a config (nn.Linear projections, so kronfluence tracks it), fine-tuned briefly and saved in
Hugging Face format, so every `--model DIR` option takes it as it takes a real model directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
# A minimal chat template: the SFT encoding and generation prompts use it like any real one.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|end|>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DEFAULT_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
}


def build_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with pad / eos / chat tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config: int) -> Qwen2ForCausalLM:
    """A freshly initialised Qwen2-architecture model sized by `config` (DEFAULT_CONFIG otherwise)."""
    torch.manual_seed(seed)
    settings = {**DEFAULT_CONFIG, **config}
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        attn_implementation="eager",
        **settings,
    )
    return Qwen2ForCausalLM(cfg).eval()


def fingerprint(records: list[dict], settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for record in records:
        digest.update(json.dumps([record.get("prompt"), record.get("response")]).encode())
    return digest.hexdigest()[:12]


def reference_model(
    records: list[dict],
    cache_dir: str | Path,
    *,
    seed: int = 0,
    epochs: int = 8,
    lr: float = 3e-3,
    batch_size: int = 8,
    max_length: int = 384,
    vocab_size: int = 1024,
    progress: bool = False,
    **config: int,
) -> Path:
    """The reference model fine-tuned on `records`, built once and cached under `cache_dir`.

    The directory name holds a fingerprint of the records and settings, so a changed corpus or
    setting builds a new model; the directory appears complete or not at all (built aside, renamed).
    """
    from attribution.training import finetune_causal_lm

    settings = {
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "max_length": max_length,
        "vocab_size": vocab_size,
        "config": {**DEFAULT_CONFIG, **config},
    }
    target = Path(cache_dir) / f"reference-model-{fingerprint(records, settings)}"
    if (target / "config.json").exists():
        return target
    torch.manual_seed(seed)
    texts = [f"{r['prompt']}\n{r['response']}" for r in records]
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(tokenizer, seed=seed, **config)
    with torch.no_grad():
        before = _mean_loss(model, tokenizer, records, max_length)
    model = finetune_causal_lm(
        model,
        tokenizer,
        records,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        progress=progress,
        device="cpu",
    )
    with torch.no_grad():
        after = _mean_loss(model, tokenizer, records, max_length)
    staging = Path(cache_dir) / f".building-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "assay_reference.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "train_examples": len(records),
                "loss_before": before,
                "loss_after": after,
            },
            indent=2,
        )
    )
    try:
        os.replace(staging, target)
    except OSError:  # another process built it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _mean_loss(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerFast, records: list[dict], max_length: int
) -> float:
    from attribution.lm_data import collate, pad_id
    from attribution.training import encode_records

    data = encode_records(tokenizer, records, max_length)
    total, count = 0.0, 0
    for start in range(0, len(data), 16):
        batch = collate(data[start : start + 16], pad_id(tokenizer))
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        total += float(out.loss) * len(data[start : start + 16])
        count += len(data[start : start + 16])
    return total / count
