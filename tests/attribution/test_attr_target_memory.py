"""EK-FAC memory does not grow with the number of targets: a large-vocabulary model (32k tokens, where
each target's logits dominate the activations) attributed to 8 and to 64 targets, each run in its own
process, peak RSS from process start (VmHWM: ru_maxrss would carry pytest's own peak into the child)."""

import json
import subprocess
import sys
from pathlib import Path

RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks.harness import peak_rss_mb
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from tiny_lm import corpus_texts, make_records, make_tokenizer
from attribution.api import attribute

torch.set_num_threads(1)
n_targets, params = int(sys.argv[2]), json.loads(sys.argv[3])
train, targets = make_records(16, seed=0), make_records(n_targets, seed=1)
tok = make_tokenizer(corpus_texts(train + targets))
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
    eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, attn_implementation="eager",
    tie_word_embeddings=False,
)
result = attribute(
    LlamaForCausalLM(config).eval(), train, targets, tokenizer=tok, method="ekfac", max_length=64,
    method_params=params,
)
print(json.dumps({"peak_mb": peak_rss_mb(), "rows": len(result.scores)}))
"""


def _peak_mb(n_targets: int, **params) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(Path(__file__).parent), str(n_targets), json.dumps(params)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],  # the repository: benchmarks.harness imports from there
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == 16 * n_targets
    return out["peak_mb"]


def test_peak_memory_is_flat_in_the_number_of_targets():
    """64 targets within 1.25x the peak of 8 (the targets' gradients are computed 8 at a time). The
    control puts all 64 through one pass, as kronfluence's pairwise scores do: its peak is well above
    the bar, so the bar measures what it claims."""
    eight, sixty_four = _peak_mb(8), _peak_mb(64)
    assert sixty_four <= 1.25 * eight, (eight, sixty_four)
    one_pass = _peak_mb(64, query_batch_size=64)
    assert one_pass > 1.25 * eight, (eight, one_pass)


def test_query_batch_from_free_device_memory():
    """On CUDA with query_batch_size None, the first query's measured peak sizes the rest: half the free
    memory over one query's bytes, at least 1, at most 512."""
    from attribution.ekfac import batch_from_memory

    assert batch_from_memory(free_bytes=10 * 2**30, per_example_bytes=2**28) == 20
    assert batch_from_memory(free_bytes=2**20, per_example_bytes=2**30) == 1
    assert batch_from_memory(free_bytes=2**40, per_example_bytes=1) == 512


def test_target_gradients_are_keyed_by_content():
    """Stored target gradients are found again by the targets' contents (another process, a copy of
    the items), never by identity; any change of a token or of the order is another key."""
    import torch

    from attribution.ekfac import content_digest

    items = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3])} for _ in range(2)]
    items[1]["input_ids"] = torch.tensor([4, 5, 6])
    copy = [{k: v.clone() for k, v in item.items()} for item in items]
    assert content_digest(items) == content_digest(copy)
    copy[1]["labels"] = torch.tensor([-100, 5, 7])
    assert content_digest(items) != content_digest(copy)
    assert content_digest(items) != content_digest(items[::-1])
