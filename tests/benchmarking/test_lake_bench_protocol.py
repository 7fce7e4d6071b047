from benchmarks.lake.bench import PAIR_ROUNDS, PEER_ROUNDS, _paired_schedule

PAIR = ("assay gate", "raw duckdb")


def test_gate_and_raw_duckdb_run_back_to_back_each_first_in_half_the_rounds():
    schedule = _paired_schedule(["assay gate", "raw duckdb", "pandas", "polars"], PAIR)
    assert len(schedule) == PAIR_ROUNDS
    firsts = []
    for order in schedule:
        at = order.index("assay gate"), order.index("raw duckdb")
        assert abs(at[0] - at[1]) == 1, order  # nothing runs between the two sides of a ratio
        firsts.append(order[min(at)])
    assert firsts.count("assay gate") == firsts.count("raw duckdb") == PAIR_ROUNDS // 2


def test_peers_join_some_rounds_before_the_pair_in_half_and_after_it_in_half():
    schedule = _paired_schedule(["assay gate", "raw duckdb", "pandas", "polars"], PAIR)
    with_peers = [order for order in schedule if "pandas" in order]
    assert len(with_peers) == PEER_ROUNDS and all("polars" in order for order in with_peers)
    before = [order for order in with_peers if order.index("pandas") < order.index("assay gate")]
    assert len(before) == PEER_ROUNDS // 2
    # which side of the pair runs right after the peers is balanced too
    after_peers = [order[2] for order in before]
    assert after_peers.count("assay gate") == after_peers.count("raw duckdb")
