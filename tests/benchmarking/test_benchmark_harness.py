"""The benchmark harness: results files with the machine, skips, failures, README generation,
the FLOP counting and matmul peak, and the GPU section's code path (run here on the CPU)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from benchmarks import harness, readme
from benchmarks.attribution.bench import count_flops, matmul_peak, throughput_table

TABLE = {"title": "A table", "columns": ["what", "value"], "rows": [["x", 1.25], ["y", 3]], "notes": "a note"}


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def fake_benchmark(monkeypatch, name: str, run=None, skip: str | None = None) -> None:
    module = types.ModuleType(f"benchmarks.{name}.bench")
    module.run = run or (lambda quick: [TABLE])
    if skip is not None:
        module.skip_reason = lambda: skip
    monkeypatch.setitem(sys.modules, f"benchmarks.{name}.bench", module)


def test_results_carry_the_machine_and_the_tables(results, monkeypatch):
    fake_benchmark(monkeypatch, "fake")
    out = harness.run_benchmark("fake", quick=True)
    saved = json.loads((results / "fake.json").read_text())
    assert saved["tables"] == [TABLE] and out["tables"] == [TABLE]
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["memory_gib"] > 0
    assert saved["machine"]["libraries"]["torch"] == torch.__version__.split("+")[0] or saved["machine"][
        "libraries"
    ]["torch"].startswith(torch.__version__.split("+")[0])
    assert saved["machine"]["device"] in (
        "cpu",
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    )
    md = (results / "fake.md").read_text()
    assert "| x | 1.25 |" in md and "| y | 3 |" in md and "a note" in md and "quick" in md


def test_a_failing_benchmark_is_recorded_and_the_others_still_run(results, monkeypatch):
    def broken(quick):
        raise ValueError("boom in the benchmark")

    fake_benchmark(monkeypatch, "broken", run=broken)
    out = harness.run_benchmark("broken", quick=True)
    assert "boom in the benchmark" in out["error"]
    assert "Failed" in (results / "broken.md").read_text()


def test_a_skipped_benchmark_says_why_and_keeps_earlier_results(results, monkeypatch):
    results.mkdir()
    (results / "gpuish.json").write_text('{"earlier": true}')
    fake_benchmark(
        monkeypatch,
        "gpuish",
        run=lambda quick: pytest.fail("a skipped benchmark must not run"),
        skip="no CUDA device here",
    )
    out = harness.run_benchmark("gpuish", quick=True)
    assert out["skipped"] == "no CUDA device here"
    assert json.loads((results / "gpuish.json").read_text()) == {"earlier": True}
    assert not (results / "gpuish.md").exists()


def test_the_gpu_section_skips_with_a_clear_line_without_cuda(monkeypatch):
    from benchmarks.gpu import bench as gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = harness.skip_reason("gpu")
    assert reason and "no CUDA device" in reason and "make bench-gpu" in reason
    with pytest.raises(RuntimeError, match="skipped"):
        gpu.run(quick=True)


def test_readme_sections_are_generated_from_results(results, monkeypatch, tmp_path):
    fake_benchmark(monkeypatch, "fake")
    harness.run_benchmark("fake", quick=True)
    monkeypatch.setattr(readme, "available", lambda: ["fake", "gpuish"])
    monkeypatch.setattr(readme, "skip_reason", lambda name: "no CUDA device" if name == "gpuish" else None)
    page = tmp_path / "README.md"
    page.write_text(
        "intro\n<!-- BEGIN performance -->\nold typed text\n<!-- END performance -->\n"
        "<!-- BEGIN reliability -->\nold\n<!-- END reliability -->\nend\n"
    )
    readme.update_readme(page)
    text = page.read_text()
    assert "old typed text" not in text and text.startswith("intro\n") and text.endswith("end\n")
    # a summary row per benchmark (its first table's title without a headline) linking the full tables,
    # which stay out of the README
    assert "| [fake](benchmarks/results/README.md#fake) | A table | " in text and "| x | 1.25 |" not in text
    assert "| gpuish | no results yet; skipped here: no CUDA device | |" in text
    sys.modules["benchmarks.fake.bench"].headline = lambda tables: f"x is {tables[0]['rows'][0][1]} | wide"
    readme.update_readme(page)
    assert "| [fake](benchmarks/results/README.md#fake) | x is 1.25 \\| wide | " in page.read_text()
    index = harness.write_index()
    assert "## fake" in index.read_text() and "| x | 1.25 |" in index.read_text()  # the full tables
    page.write_text("no markers here\n")
    with pytest.raises(ValueError, match="BEGIN performance"):
        readme.update_readme(page)


def test_flop_count_of_a_known_matmul():
    a, b = torch.randn(32, 48), torch.randn(48, 16)
    assert count_flops(torch.mm, a, b) == 2 * 32 * 48 * 16
    linear = torch.nn.Linear(48, 16)
    assert count_flops(linear, a) == 2 * 32 * 48 * 16


def test_matmul_peak_is_measured():
    peak = matmul_peak("cpu", "float32", sizes=(64, 128), repeats=2)
    assert peak["flops_per_s"] > 1e6 and peak["size"] in (64, 128) and peak["dtype"] == "float32"


def test_a_peer_that_cannot_run_on_a_causal_lm_is_explained():
    results = {
        "assay ekfac": {
            "seconds": 2.0,
            "cpu_seconds": 2.0,
            "peak_mb": 500,
            "extra_mb": 50,
            "n_train": 8,
            "all_seconds": [2.0],
        },
        "dattri ekfac": {"error": "UnboundLocalError: cannot access local variable 'a_prev'"},
    }
    ctx = {"train": [0] * 8, "targets": [0] * 2, "size": {"max_length": 64, "proj_dim": 32, "repeats": 1}}
    table = throughput_table(ctx, results)
    row = next(r for r in table["rows"] if r[0] == "dattri ekfac")
    assert "2-D layer inputs only" in row[-1]
    ours = next(r for r in table["rows"] if r[0] == "assay ekfac")
    assert ours[1] == 4.0 and ours[6] == 1.0  # 8 examples / 2 CPU s; compared with itself


@pytest.mark.slow
def test_gpu_section_code_path_runs_on_the_cpu(tmp_path, monkeypatch):
    """The GPU section's tables at a tiny size on the CPU: every figure real and consistent."""
    from benchmarks.gpu.bench import section

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    tiny = {
        "model": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
        "corpus": {"math_per_level": 2, "math_targets_per_level": 1, "code_limit": 10},
        "n_train": 8,
        "n_targets": 2,
        "max_length": 64,
        "proj_dim": 128,
        "repeats": 1,
    }
    mixing = {
        "steps": 8,
        "batch": 4,
        "max_len": 48,
        "hidden": 16,
        "layers": 1,
        "seeds": (0,),
        "math_per_level": 10,
        "test_per_level": 2,
    }
    throughput, share, final_losses, curves = section(
        "cpu", tiny, names=["assay trak", "traker"], mixing_size=mixing
    )
    rows = {r[0]: r for r in throughput["rows"]}
    assert set(rows) == {"assay trak", "traker"}
    for row in rows.values():
        assert row[1] > 0 and row[2] > 0, row  # examples per CPU second, CPU seconds
    assert rows["assay trak"][6] == 1.0 and rows["traker"][6] > 0
    shares = {r[0]: r for r in share["rows"]}
    assert set(shares) == {"assay trak", "traker"}
    for row in shares.values():
        gflop, seconds, reached, peak, percent = row[2:7]
        assert gflop > 0 and peak > 0 and 0 < percent < 100, row
        assert reached == pytest.approx(gflop / seconds, rel=0.05)
    # both paths do the same featurisation: the same matmul work
    assert shares["assay trak"][2] == pytest.approx(shares["traker"][2], rel=0.05)
    assert "1 layers, hidden 32" in throughput["title"]
    # the mixing reproduction: four arms, finite held-out losses, evaluated at four points each
    assert len(final_losses["rows"]) == 4 and "on cpu" in final_losses["notes"]
    assert all(0 < row[3] < 20 for row in final_losses["rows"])
    assert len(curves["rows"]) == 16


def test_the_command_line_writes_where_told_and_refuses_unknown_names(tmp_path, monkeypatch, capsys):
    from benchmarks.__main__ import main

    fake_benchmark(monkeypatch, "fake")
    monkeypatch.setattr(harness, "RESULTS", harness.RESULTS)  # restored after the test
    monkeypatch.setattr("benchmarks.__main__.available", lambda: ["fake"])
    readme_before = readme.README.read_text()
    assert main(["fake", "--results", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "fake.json").read_text())["tables"] == [TABLE]
    assert "## fake" in (tmp_path / "out" / "README.md").read_text()
    assert readme.README.read_text() == readme_before
    assert main(["nope", "--results", str(tmp_path / "out")]) == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


def test_peak_rss_counts_from_the_process_start_not_the_parents_peak(tmp_path):
    """A worker started by a process that once held 400 MB reports its own peak: Linux's ru_maxrss would
    carry the parent's 400 MB into the child through fork and exec."""
    import subprocess

    child = "from benchmarks.harness import peak_rss_mb; print(peak_rss_mb())"
    parent = (
        "import subprocess, sys; import numpy as np\n"
        "held = np.ones(50_000_000); del held\n"  # 400 MB touched, then freed
        f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, check=True).stdout)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, check=True, cwd=root
    ).stdout
    child_peak = float(out.split()[-1])
    assert 1 < child_peak < 200, child_peak
