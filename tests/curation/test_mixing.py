"""Temperature sampling, scalarization, Cooldown and materialisation (curation.mixing)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from curation import mixing


def zipf_groups(k: int, exponent: float, largest: int = 2000) -> list[str]:
    sizes = [max(1, int(largest / (r**exponent))) for r in range(1, k + 1)]
    return [f"g{r:02d}" for r, n in enumerate(sizes) for _ in range(n)]


def tv_bound(k: int, draws: int, delta: float = 1e-6) -> float:
    # Bretagnolle-Huber-Carol: P(TV(empirical, p) > eps) <= 2^k exp(-2 draws eps^2).
    return math.sqrt((k * math.log(2) + math.log(1 / delta)) / (2 * draws))


def test_temperature_probs_follow_the_formula() -> None:
    counts = pd.Series([900, 90, 10], index=["math", "code", "chat"])
    for tau in (0.5, 1.0, 2.0, 5.0, 50.0):
        p = mixing.temperature_probs(counts, tau)
        expected = counts.to_numpy() ** (1 / tau) / (counts.to_numpy() ** (1 / tau)).sum()
        np.testing.assert_allclose(p.to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(mixing.temperature_probs(counts, 1.0).to_numpy(), [0.9, 0.09, 0.01])
    np.testing.assert_allclose(mixing.temperature_probs(counts, np.inf).to_numpy(), [1 / 3] * 3)
    # Huge counts with a small tau would overflow n^(1/tau) computed directly.
    big = mixing.temperature_probs(pd.Series([10**9, 10**8]), 0.01)
    assert np.isfinite(big).all() and big.iloc[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mixing.temperature_probs(counts, 0.0)
    with pytest.raises(ValueError):
        mixing.temperature_probs(pd.Series([3, 0]), 1.0)


def test_scalarization_weights_are_the_probability_ratio_with_mean_one() -> None:
    groups = ["a"] * 800 + ["b"] * 150 + ["c"] * 50
    counts = mixing.group_counts(groups)
    w = mixing.scalarization_weights(counts, 5.0)
    ratio = mixing.temperature_probs(counts, 5.0) / mixing.temperature_probs(counts, 1.0)
    np.testing.assert_allclose(w.to_numpy(), ratio.to_numpy())
    per_example = mixing.example_weights(groups, 5.0)
    assert per_example.mean() == pytest.approx(1.0)
    assert per_example[0] < 1 < per_example[-1]  # the large group is down-weighted, the small one up


@pytest.mark.parametrize("replace", [True, False])
def test_sampled_proportions_match_the_formula_within_a_total_variation_bound(replace: bool) -> None:
    groups = zipf_groups(6, 1.2)
    counts = mixing.group_counts(groups)
    tau, steps, batch = 3.0, 400, 64
    probs = mixing.schedule_probabilities(counts, mixing.tau_schedule(steps, "constant", tau_start=tau))
    drawn = mixing.sample_steps(groups, probs, batch, seed=7, replace=replace)
    assert len(drawn) == steps * batch
    empirical = drawn["group"].value_counts(normalize=True).reindex(counts.index, fill_value=0.0)
    tv = 0.5 * np.abs(empirical.to_numpy() - mixing.temperature_probs(counts, tau).to_numpy()).sum()
    assert tv <= tv_bound(len(counts), len(drawn))
    # Every drawn index really belongs to the group it is reported under.
    np.testing.assert_array_equal(np.asarray(groups, dtype=object)[drawn["index"]], drawn["group"])


def test_cooldown_sample_follows_each_phase() -> None:
    groups = ["big"] * 950 + ["small"] * 50
    counts = mixing.group_counts(groups)
    steps, batch = 200, 50
    taus = mixing.tau_schedule(steps, "cooldown")
    drawn = mixing.sample_steps(groups, mixing.schedule_probabilities(counts, taus), batch, seed=3)
    for phase, tau in ((drawn["step"] < 100, 5.0), (drawn["step"] >= 100, 1.0)):
        share = (drawn.loc[phase, "group"] == "small").mean()
        target = mixing.temperature_probs(counts, tau)["small"]
        assert abs(share - target) <= tv_bound(2, int(phase.sum()))


def test_sampling_is_seeded() -> None:
    groups = zipf_groups(4, 1.0, largest=300)
    counts = mixing.group_counts(groups)
    probs = mixing.schedule_probabilities(counts, mixing.tau_schedule(20, "cooldown"))
    a = mixing.sample_steps(groups, probs, 16, seed=11)
    b = mixing.sample_steps(groups, probs, 16, seed=11)
    c = mixing.sample_steps(groups, probs, 16, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not a["index"].equals(c["index"])


def test_without_replacement_no_example_repeats_before_its_group_is_used_up() -> None:
    groups = ["a"] * 40 + ["b"] * 7
    counts = mixing.group_counts(groups)
    probs = mixing.schedule_probabilities(counts, mixing.tau_schedule(30, "constant", tau_start=100.0))
    drawn = mixing.sample_steps(groups, probs, 8, seed=0, replace=False)
    times = mixing.copies_from_sequence(drawn["index"].to_numpy(), len(groups))
    for group, n in counts.items():
        members = times[np.asarray(groups) == group]
        draws = int(members.sum())
        assert draws > 2 * n  # several passes over each group
        # Walking shuffled passes: every example is drawn floor or ceil of draws / n times.
        assert members.min() >= draws // n and members.max() <= -(-draws // n)
    with_replacement = mixing.copies_from_sequence(
        mixing.sample_steps(groups, probs, 8, seed=0, replace=True)["index"].to_numpy(), len(groups)
    )
    assert with_replacement.max() - with_replacement.min() > 1  # uniform draws are not balanced


@pytest.mark.parametrize("k,exponent", [(3, 1.0), (8, 1.0), (20, 1.5), (50, 0.7)])
def test_variance_factor_is_at_least_one_and_non_decreasing_for_zipf_groups(k: int, exponent: float) -> None:
    counts = mixing.group_counts(zipf_groups(k, exponent, largest=5000))
    taus = np.concatenate([np.linspace(1.0, 10.0, 91), [20.0, 50.0, 1e3]])
    f = np.array([mixing.variance_factor(counts, t) for t in taus])
    assert f[0] == pytest.approx(1.0)
    assert (f >= 1.0 - 1e-12).all()
    assert (np.diff(f) >= -1e-12).all()
    assert f[-1] > 1.0  # unequal groups: upweighting really costs variance


def test_temperature_sampling_has_lower_gradient_variance_than_scalarization() -> None:
    # Toy least-squares mixture: groups share the input distribution, differ in their true weights
    # (all of norm 1, so per-group gradient scales match, as in the paper's analysis).
    rng = np.random.default_rng(0)
    dim, sizes = 5, {"big": 3000, "mid": 400, "tiny": 40}
    xs, ys, groups = [], [], []
    for name, n in sizes.items():
        w_true = rng.normal(size=dim)
        w_true /= np.linalg.norm(w_true)
        x = rng.normal(size=(n, dim))
        xs.append(x)
        ys.append(x @ w_true + 0.1 * rng.normal(size=n))
        groups += [name] * n
    x, y = np.vstack(xs), np.concatenate(ys)
    w = np.zeros(dim)
    per_example_grad = (x @ w - y)[:, None] * x  # gradient of 0.5 (x.w - y)^2
    tau, steps, batch = 5.0, 3000, 8
    counts = mixing.group_counts(groups)
    temp = mixing.sample_steps(
        groups,
        mixing.schedule_probabilities(counts, mixing.tau_schedule(steps, "constant", tau_start=tau)),
        batch,
        seed=1,
        replace=True,
    )
    prop = mixing.sample_steps(
        groups,
        mixing.schedule_probabilities(counts, mixing.tau_schedule(steps, "constant", tau_start=1.0)),
        batch,
        seed=2,
        replace=True,
    )
    loss_weight = mixing.example_weights(groups, tau)

    def batch_grads(drawn: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
        g = per_example_grad[drawn["index"]] * weights[drawn["index"]][:, None]
        return pd.DataFrame(g).groupby(drawn["step"].to_numpy()).mean().to_numpy()

    g_temp = batch_grads(temp, np.ones(len(groups)))
    g_scal = batch_grads(prop, loss_weight)
    # Same target: the tau-mixture of group mean gradients.
    means = pd.DataFrame(per_example_grad).groupby(np.asarray(groups)).mean().reindex(counts.index)
    target = (mixing.temperature_probs(counts, tau).to_numpy()[:, None] * means.to_numpy()).sum(axis=0)
    for g in (g_temp, g_scal):
        assert np.linalg.norm(g.mean(axis=0) - target) < 0.1 * np.linalg.norm(target) + 0.05
    var_temp = g_temp.var(axis=0).sum()
    var_scal = g_scal.var(axis=0).sum()
    assert var_temp < var_scal
    assert mixing.variance_factor(counts, tau) > 1.5  # a large gap is what the comparison rests on


def test_schedule_shapes() -> None:
    cool = mixing.tau_schedule(10, "cooldown")
    np.testing.assert_array_equal(cool, [5.0] * 5 + [1.0] * 5)
    custom = mixing.tau_schedule(10, "cooldown", tau_start=3.0, tau_end=1.5, switch=0.3)
    np.testing.assert_array_equal(custom, [3.0] * 3 + [1.5] * 7)
    lin = mixing.tau_schedule(11, "linear")
    assert lin[0] == 5.0 and lin[-1] == 1.0 and lin[5] == pytest.approx(3.0)
    assert np.allclose(np.diff(lin), -0.4)
    cos = mixing.tau_schedule(101, "cosine")
    assert cos[0] == pytest.approx(5.0) and cos[-1] == pytest.approx(1.0) and cos[50] == pytest.approx(3.0)
    assert (np.diff(cos) <= 1e-12).all()
    assert cos[10] > lin_at(101, 10) and cos[90] < lin_at(101, 90)  # slow start, slow finish
    np.testing.assert_array_equal(mixing.tau_schedule(4, "constant", tau_start=2.0), [2.0] * 4)
    for bad in ({"kind": "step"}, {"tau_start": 0.0}, {"switch": 1.5}):
        with pytest.raises(ValueError):
            mixing.tau_schedule(10, **bad)


def lin_at(steps: int, t: int) -> float:
    return 5.0 - 4.0 * t / (steps - 1)


def test_schedule_probabilities_and_long_form() -> None:
    counts = pd.Series([90, 10], index=["math", "code"])
    taus = mixing.tau_schedule(4, "cooldown")
    probs = mixing.schedule_probabilities(counts, taus)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs.loc[0], mixing.temperature_probs(counts, 5.0))
    np.testing.assert_allclose(probs.loc[3], [0.9, 0.1])
    long = mixing.schedule_long(probs, taus)
    assert list(long.columns) == ["step", "group", "tau", "probability"]
    assert len(long) == 8 and set(long["tau"]) == {5.0, 1.0}
    assert long.groupby("step")["probability"].sum().tolist() == pytest.approx([1.0] * 4)


def test_materialised_copies_follow_the_mixture_and_do_not_depend_on_chunking() -> None:
    groups = ["a"] * 5000 + ["b"] * 500 + ["c"] * 20
    ids = [f"ex{i}" for i in range(len(groups))]
    counts = mixing.group_counts(groups)
    probs = mixing.temperature_probs(counts, 4.0)
    expected = mixing.expected_copies(groups, probs, counts, total=len(groups))
    assert expected.sum() == pytest.approx(len(groups))
    copies = mixing.round_copies(ids, expected, seed=5)
    assert (copies == np.floor(expected)).sum() + (copies == np.floor(expected) + 1).sum() == len(copies)
    halves = np.concatenate(
        [
            mixing.round_copies(ids[:2000], expected[:2000], seed=5),
            mixing.round_copies(ids[2000:], expected[2000:], seed=5),
        ]
    )
    np.testing.assert_array_equal(copies, halves)
    assert not np.array_equal(copies, mixing.round_copies(ids, expected, seed=6))
    report = mixing.effective_epochs(groups, copies)
    for group, row in report.iterrows():
        assert row["draws"] == pytest.approx(
            probs[group] * len(groups), abs=4 * math.sqrt(row["examples"]) + 1
        )
    assert report.loc["c", "effective_epochs"] > 10 and report.loc["a", "unseen"] > 0.3
    np.testing.assert_array_equal(mixing.materialise_copies(ids, groups, 4.0, seed=5), copies)


def test_epoch_sequence_and_effective_epochs_over_a_schedule() -> None:
    copies = np.array([0, 3, 1, 2])
    seq = mixing.epoch_sequence(copies, seed=1)
    np.testing.assert_array_equal(np.bincount(seq, minlength=4), copies)
    np.testing.assert_array_equal(mixing.copies_from_sequence(seq, 4), copies)
    counts = pd.Series([900, 100], index=["a", "b"])
    probs = mixing.schedule_probabilities(counts, mixing.tau_schedule(100, "cooldown"))
    epochs = mixing.schedule_effective_epochs(counts, probs, batch_size=10)
    p5, p1 = mixing.temperature_probs(counts, 5.0), mixing.temperature_probs(counts, 1.0)
    assert epochs["b"] == pytest.approx(10 * 50 * (p5["b"] + p1["b"]) / 100)
    assert epochs["b"] > epochs["a"]


def test_step_group_counts_are_within_one_draw_of_their_expectation_and_unbiased() -> None:
    probs = np.tile([0.62, 0.3, 0.08], (20_000, 1))
    counts = mixing.step_group_counts(probs, 16, np.random.default_rng(0))
    expected = 16 * probs
    assert (counts.sum(axis=1) == 16).all()
    assert ((counts == np.floor(expected)) | (counts == np.ceil(expected))).all()
    # Unbiased: each step's error is in (-1, 1) with mean 0, so the mean over 20,000 steps is within
    # 0.5 / sqrt(20000) = 0.0035 (one sd) of the expectation.
    np.testing.assert_allclose(counts.mean(axis=0), expected[0], atol=0.02)


def test_schedule_phases_start_where_the_temperature_changes() -> None:
    assert mixing.schedule_phases(mixing.tau_schedule(5, "cooldown", 5.0, 1.0, 0.5)).tolist() == [
        0,
        0,
        0,
        1,
        1,
    ]
    assert mixing.schedule_phases(mixing.tau_schedule(4, "constant", 3.0)).tolist() == [0, 0, 0, 0]
    assert mixing.schedule_phases(mixing.tau_schedule(4, "linear", 5.0, 1.0)).tolist() == [0, 1, 2, 3]
