"""Fingerprints of model directories: part of a run's identity, so a changed model gets a new run.

One definition for every stage that names a model (attribution, unlearning, DART generators, embedding
models): a content hash of the files that define a model (config, tokenizer, weights). Files above
`BIG_FILE` are hashed by size, head and tail, so a multi-GB checkpoint costs two reads of 16 MB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

BIG_FILE = 256 << 20
CHUNK = 16 << 20
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".pt", ".pth", ".gguf")


def directory_fingerprint(model_dir: str | Path) -> str:
    """Content hash of a model directory's config, tokenizer and weight files (16 hex digits)."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES):
        digest.update(str(path.relative_to(root)).encode())
        size = path.stat().st_size
        digest.update(str(size).encode())
        with open(path, "rb") as fh:
            if size <= BIG_FILE:
                for block in iter(lambda fh=fh: fh.read(CHUNK), b""):
                    digest.update(block)
            else:
                digest.update(fh.read(CHUNK))
                fh.seek(size - CHUNK)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def model_reference(model_dir: str | Path) -> str:
    """`<absolute path>@<fingerprint>`: how a run records the model it used."""
    path = Path(model_dir).expanduser().absolute()
    return f"{path}@{directory_fingerprint(path)}"
