"""The README's one-line results: each benchmark's `headline(tables)` on tables of the shape its `run()`
returns, with the verdict against each target computed from the ratios (a missed target says so)."""

from __future__ import annotations

from benchmarks.lake.bench import headline as lake_headline
from benchmarks.mixing.bench import headline as mixing_headline
from benchmarks.ppp.bench import headline as ppp_headline


def lake_tables(gate: tuple[float, float], polars: tuple[float, float], ingest: list[float]) -> list[dict]:
    def engine(name, ratios, middle=("1.00-1.00", "1.00-1.00"), rounds=16):
        return [name, 1.0 * ratios[0], ratios[0], 2.0 * ratios[1], ratios[1], *middle, rounds]

    queries = {
        "title": "Queries over 50,000,000 score rows (paired rounds)",
        "rows": [
            engine("assay gate", gate, ("0.98-1.09", "1.01-1.12")),
            engine("raw duckdb", (1.0, 1.0)),
            engine("pandas", (20.0, 12.0), rounds=4),
            engine("polars", polars, rounds=4),
        ],
    }
    sizes = [("200,000 rows (40 MB)", "warm"), ("5,000,000 rows (1,000 MB)", "cold")]
    rows = [
        [size, memory, 2.0 * r, 2.0, r, r * 0.9, 500, 400]
        for (size, memory), r in zip(sizes, ingest, strict=False)
    ]
    registry = {"title": "Registry", "rows": [["100", 0.03, 0.09, 3.0], ["1,000", 0.05, 0.7, 14.0]]}
    return [queries, {"title": "Ingest", "rows": rows}, registry]


def test_lake_headline_states_each_target_and_whether_it_is_met():
    line = lake_headline(lake_tables((1.04, 1.08), (4.0, 1.6), [2.5, 2.9]))
    assert "gate 1.04x / 1.08x raw DuckDB" in line and "50,000,000 score rows" in line
    assert (
        "score rows; crossover ratio of 16 paired rounds, middle half 0.98-1.09 / 1.01-1.12; target" in line
    )
    assert "target <= 1.1x: met" in line and "ahead of polars and pandas: yes" in line
    assert "ingest 200,000 rows, warm memory: 2.50x bare pyarrow wall" in line
    assert line.count("(target <= 3x: met)") == 2
    assert "a gated query at 1,000 runs: 0.050 s with the compacted registry, 14.0x faster" in line

    missed = lake_headline(lake_tables((1.04, 1.25), (4.0, 1.1), [2.5, 3.4]))
    # the worse of the two queries decides; polars ahead of the gate on by-group is reported
    assert "target <= 1.1x: NOT met" in missed and "ahead of polars and pandas: NO" in missed
    assert (
        "ingest 5,000,000 rows, cold memory: 3.40x bare pyarrow wall, 3.06x CPU (target <= 3x: NOT met)"
        in missed
    )


def test_ppp_headline_counts_data_sets_where_every_seed_found_the_true_k():
    robust = {
        "rows": [
            ["uniform", 1, "PPP", "1.0 (1-1)", 1.0, 5],
            ["uniform", 1, "GMM BIC sweep", "5.4 (4-6)", 0.0, 5],
            ["blobs", 6, "PPP", "5.8 (5-6)", 0.97, 5],  # one seed short: not counted
            ["blobs", 6, "GMM BIC sweep", "6.0 (6-6)", 1.0, 5],
        ]
    }
    scale = {
        "rows": [
            ["PPP (assay)", 100_000, 10, 0.9999, 20.0, 1.0],
            ["sweep", 100_000, 11, 0.97, 5.0, 0.25],
            ["HDBSCAN", 20_000, 3, 0.02, 80.0, 4.0],
        ]
    }
    line = ppp_headline([robust, scale, {"rows": []}])
    assert "true k with every seed on 2 data sets (5 seeds each): PPP 1, GMM BIC sweep 1" in line
    assert "100,000 x 64 points" in line and "PPP ARI 1.000 in 20 s" in line
    assert "ARI 0.970 in 0.25x PPP's time" in line and "ARI 0.02 in 4.0x" in line


def test_mixing_headline_reads_final_losses_scale_and_loss_weight_cost():
    final = {
        "title": "Mixing reproduction: held-out loss per group after training (lower is better)",
        "rows": [
            ["proportional (tau=1)", "0.928 (0.928-0.929)", "2.081 (2.047-2.116)"],
            ["temperature (tau=5)", "1.005 (1.002-1.007)", "2.473 (2.337-2.610)"],
        ],
        "notes": "reference model (Qwen2, 2 layers x 64, on cpu), BPE ... Mean over seeds [0, 1] (min-max).",
    }
    scale = {
        "title": "Mixing at scale: materialising copies for a temperature mixture",
        "rows": [["pandas", 10_000_000, 9.0, 3000, "-", 1.0], ["dask", 10_000_000, 4.5, 700, 390, 2.0]],
        "notes": "... Per-group draws and a file of per-example copies are identical between the two: NO.",
    }
    weights = {
        "title": "Applying loss_weight in training: seconds per step against the trainer it extends",
        "rows": [
            ["TRL SFTTrainer", 10.0, 1.0],
            ["WeightedSFTTrainer", 11.0, 1.1],
            ["transformers Trainer", 9.0, 1.0],
            ["WeightedTrainer", 9.9, 1.1],
        ],
    }
    line = mixing_headline([final, {"title": "curves", "rows": []}, scale, weights])
    assert "proportional (tau=1) 2.081 / 0.928; temperature (tau=5) 2.473 / 1.005" in line
    assert "(model Qwen2, 2 layers x 64, on cpu, seeds [0, 1])" in line
    assert "dask 2.00x pandas's speed (NOT identical results)" in line
    assert "loss_weight costs 1.10x SFTTrainer's and 1.10x Trainer's time per step" in line


def test_attribution_headline_states_the_target_memory_bar_and_the_peers():
    from benchmarks.attribution.bench import headline

    speed = {
        "title": "Attribution throughput and peak memory (reference LM, CPU)",
        "rows": [
            ["assay ekfac", 2.0, 16.0, 16.0, 900, 400, 1.0, 950, ""],
            ["kronfluence", 2.4, 13.3, 13.3, 900, 400, 1.2, 950, ""],
            ["assay trak", 3.0, 10.0, 10.0, 900, 400, 1.0, 950, ""],
            ["traker", 1.0, 33.0, 33.0, 900, 400, 0.303, 950, ""],
        ],
        "notes": "32 training and 8 target examples, max_length 192, ...",
    }
    memory = {
        "title": "EK-FAC peak memory against the number of targets (32k-vocabulary model, CPU)",
        "columns": ["path", "peak RSS MB, 8 targets", "peak RSS MB, 64 targets", "64 / 8", "a", "b", "notes"],
        "rows": [
            ["assay ekfac", 1000, 1300, 1.3, 5.0, 12.0, ""],
            ["kronfluence", 1000, 4000, 4.0, 4.0, 10.0, ""],
        ],
    }
    growth = {
        "title": "Scaling with training examples (reference LM, CPU)",
        "columns": [
            "method",
            "CPU s at 32",
            "time exponent",
            "extra-RSS exponent",
            "extra RSS growth MB (32 -> 256)",
        ],
        "rows": [["ekfac", 1.0, 0.91, 0.1, 12], ["trak", 1.0, 0.8, 0.05, 3]],
    }
    lds = {
        "title": "LDS on the reference LM (higher is better)",
        "rows": [["ekfac", 0.41, 0.05, 0.03, 8, 3.0], ["gradsim (cosine)", 0.3, 0.06, 0.04, 8, 1.0]],
    }
    line = headline([speed, memory, growth, lds])
    assert "EK-FAC 1.2x kronfluence, TRAK 0.303x traker (32 training and 8 target examples" in line
    # 1300 / 1000 is above the bar; 12 s / 10 s is above 1.1x: both said plainly
    assert "EK-FAC peak RSS 64 / 8 targets 1.3x (target <= 1.25x: NOT met" in line
    assert "CPU time at 64 targets 1.20x kronfluence's (target <= 1.1x: NOT met)" in line
    assert "time exponent in training examples: ekfac 0.91, trak 0.8" in line
    assert "extra RSS growth over 32 -> 256: ekfac 12 MB, trak 3 MB" in line
    assert "LDS ekfac 0.410 +- 0.050, best gradsim 0.300 +- 0.060" in line
    memory["rows"][0][3], memory["rows"][0][5] = 1.1, 10.5
    assert "(target <= 1.25x: met" in headline([memory]) and "(target <= 1.1x: met)" in headline([memory])
