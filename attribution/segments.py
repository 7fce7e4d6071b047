"""Split a response into steps (lines, sentences, or a custom regex) and sum token scores per step."""

from __future__ import annotations

import re

import numpy as np

# A sentence ends at . ! ? followed by whitespace, or at a line break (reasoning steps often are lines).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LINE_END = re.compile(r"\n+")


def split_segments(text: str, mode: str = "lines") -> list[tuple[int, int]]:
    """Character spans (start, end) of the non-blank steps of `text`, in order.

    `mode`: "lines" (one step per non-empty line), "sentences", or a regular expression whose matches
    separate steps. Spans exclude the separators and surrounding whitespace.
    """
    if mode == "lines":
        sep = _LINE_END
    elif mode == "sentences":
        sep = _SENTENCE_END
    else:
        sep = re.compile(mode)
    spans, start = [], 0
    for match in sep.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        stripped = text[a:b]
        lead = len(stripped) - len(stripped.lstrip())
        trail = len(stripped) - len(stripped.rstrip())
        if b - trail > a + lead:
            out.append((a + lead, b - trail))
    return out


def token_segments(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Segment index of each token (by the character its span starts at; -1 for tokens in no segment).

    A token that starts in a separator (e.g. "\\nSo") belongs to the segment its text continues into,
    so each token is counted in exactly one segment, or none when it holds only separators / template.
    """
    seg = np.full(len(offsets), -1, dtype=np.int64)
    for i, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        for s, (lo, hi) in enumerate(spans):
            if a < hi and b > lo:  # overlaps: first overlapping segment wins
                seg[i] = s
                break
    return seg


def segment_sums(token_scores: np.ndarray, seg_of_token: np.ndarray, n_segments: int) -> np.ndarray:
    """Sum scores (..., n_tokens) into (..., n_segments) by each token's segment index."""
    out = np.zeros(token_scores.shape[:-1] + (n_segments,), dtype=np.float64)
    for s in range(n_segments):
        out[..., s] = token_scores[..., seg_of_token == s].sum(-1)
    return out
