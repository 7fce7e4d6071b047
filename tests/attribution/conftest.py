"""Fixtures for attribution tests; the tiny models and records themselves live in tiny_lm.py."""

from tiny_lm import (  # noqa: F401  (pytest discovers fixtures by name)
    chat_lm,
    chat_tokenizer,
    records,
    targets,
    tokenizer,
    trained_dir,
)
