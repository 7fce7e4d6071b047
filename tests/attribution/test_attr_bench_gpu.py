"""The GPU section's own tables, run on the CPU at a tiny size (the code path a GPU session runs):
the environment lines, and the agreement check of scores across devices, which on one device must
find identical rankings."""

import pytest
import torch

TINY = {
    "model": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "corpus": {"math_per_level": 2, "math_targets_per_level": 1, "code_limit": 10},
    "max_length": 64,
}


def test_environment_names_the_cuda_projector_state():
    from benchmarks.gpu.bench import environment_table

    table = environment_table("cpu")
    values = dict(table["rows"])
    assert values["torch"] == torch.__version__
    assert values["fast_jl (traker's CudaProjector)"].startswith(("installed", "not installed"))


@pytest.mark.slow
def test_agreement_of_a_device_with_itself_is_perfect(tmp_path, monkeypatch):
    from benchmarks.gpu.bench import AGREEMENT_BAR, agreement_table

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    table = agreement_table("cpu", TINY, {"n_train": 8, "n_targets": 3, "proj_dim": 64})
    rows = {r[0]: r for r in table["rows"]}
    assert set(rows) == {
        "ekfac",
        "trak, factored projection",
        "gradsim, factored projection",
        "trak, dense projection",
    }
    for label, (_, mean, lowest, verdict) in rows.items():
        assert mean == pytest.approx(1.0) and lowest == pytest.approx(1.0), label
        assert verdict.startswith("n/a") if "dense" in label else verdict == "meets the bar"
    assert f">= {AGREEMENT_BAR}" in table["columns"][-1]
