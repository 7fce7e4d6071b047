"""Fixtures for the DART tests (test_dart_*.py): a tiny causal LM saved as a model directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dart_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer, 32-wide model with a locally trained tokenizer (offline)."""
    import torch

    from attribution.reference_model import build_model, build_tokenizer

    torch.set_num_threads(1)
    texts = [f"What is {a} + {b}? The answer is {a + b}." for a in range(12) for b in range(12)]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    model = build_model(
        tokenizer,
        seed=0,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    folder = tmp_path_factory.mktemp("dart-tiny-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
