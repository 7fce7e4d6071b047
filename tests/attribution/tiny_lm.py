"""Tiny offline causal LMs and SFT records for attribution tests (built locally, nothing downloads)."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic and tiny-code SFT records with domain / difficulty labels and multi-line responses."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if i % 2 == 0:
            hard = rng.random() < 0.5
            if hard:
                c = rng.randint(1, 9)
                resp = f"First {a} + {b} = {a + b}.\nThen {a + b} * {c} = {(a + b) * c}.\nSo the answer is {(a + b) * c}."
                prompt = f"What is ({a} + {b}) * {c}?"
            else:
                resp = f"{a} + {b} = {a + b}.\nSo the answer is {a + b}."
                prompt = f"What is {a} + {b}?"
            out.append(
                {
                    "example_id": f"m{i}",
                    "domain": "math",
                    "difficulty": "hard" if hard else "easy",
                    "prompt": prompt,
                    "response": resp,
                }
            )
        else:
            name = rng.choice(["add", "sub", "mul"])
            op = {"add": "+", "sub": "-", "mul": "*"}[name]
            resp = f"def {name}(a, b):\n    return a {op} b"
            out.append(
                {
                    "example_id": f"c{i}",
                    "domain": "code",
                    "difficulty": "easy",
                    "prompt": f"Write {name} of {a} and {b}.",
                    "response": resp,
                }
            )
    return out


def make_tokenizer(
    texts: list[str], vocab_size: int = 300, chat_template: str | None = None
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def make_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 32, layers: int = 2
) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attn_implementation="eager",
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def corpus_texts(records: list[dict]) -> list[str]:
    return [r["prompt"] + "\n" + r["response"] for r in records] + [CHAT_TEMPLATE]


@pytest.fixture(scope="session")
def records() -> list[dict]:
    return make_records(24, seed=0)


@pytest.fixture(scope="session")
def targets() -> list[dict]:
    return make_records(6, seed=1)


@pytest.fixture(scope="session")
def tokenizer(records) -> PreTrainedTokenizerFast:
    return make_tokenizer(corpus_texts(records + make_records(40, seed=5)))


@pytest.fixture(scope="session")
def chat_tokenizer(records) -> PreTrainedTokenizerFast:
    return make_tokenizer(corpus_texts(records + make_records(40, seed=5)), chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, tokenizer, records) -> str:
    """A tiny Llama fine-tuned on `records`, saved as a Hugging Face directory."""
    from attribution.training import finetune_causal_lm

    torch.set_num_threads(1)
    model = make_model(tokenizer)
    finetune_causal_lm(model, tokenizer, records, epochs=3, lr=3e-3, batch_size=8, max_length=64)
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def chat_lm(chat_tokenizer, records) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A tiny Llama fine-tuned on `records` through the chat template (prompt turn, then the response)."""
    from attribution.training import finetune_causal_lm

    torch.set_num_threads(1)
    model = make_model(chat_tokenizer, seed=1)
    finetune_causal_lm(model, chat_tokenizer, records, epochs=3, lr=3e-3, batch_size=8, max_length=96)
    return model.eval(), chat_tokenizer


def eager_lm(trained_dir: str, tokenizer, records: list[dict], n: int) -> tuple:
    """The trained tiny model with eager attention (torch.func needs it), in eval mode, and the first `n`
    records SFT-encoded at 64 tokens, without offsets: what kronfluence and traker batches hold."""
    from transformers import AutoModelForCausalLM

    from attribution.lm_data import encode_sft

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(trained_dir, attn_implementation="eager").eval()
    items = [{k: v for k, v in encode_sft(tokenizer, r, 64).items() if k != "offsets"} for r in records[:n]]
    return model, items


def scored_lake(root, epochs: int, targets: bool) -> tuple:
    """A lake of 4 math problems per level with a reference model fine-tuned for `epochs` and an EK-FAC
    scores run against a 1-per-level target set (`targets`) or the training set itself; the forget set is
    two of the hardest problems. Returns (records, model_dir, lake, scores run, forget ids)."""
    from attribution.reference_model import reference_model
    from attribution.stages import run_attribution
    from curation.corpus import math_problems, write_jsonl
    from storage import Lake
    from storage.ingest import ingest

    torch.set_num_threads(1)
    records = math_problems(4, seed=0)
    model_dir = reference_model(records, root / "cache", epochs=epochs, lr=3e-3, max_length=128)
    lake = Lake(root / "lake")
    ingest(lake, write_jsonl(records, root / "train.jsonl"), "train")
    against = "train"
    if targets:
        ingest(
            lake, write_jsonl(math_problems(1, seed=7, prefix="target"), root / "targets.jsonl"), "targets"
        )
        against = "targets"
    scores = run_attribution(lake, model_dir, "train", against, method="ekfac", max_length=128)
    forget = [r["id"] for r in records if r["difficulty"] == 5][:2]
    return records, model_dir, lake, scores, forget
