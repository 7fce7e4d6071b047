"""One test per library workaround in attribution/ekfac.py and attribution/trak_adapter.py, each showing
the library's behaviour that makes the workaround necessary, then that ours handles it."""

import logging
import tempfile

import numpy as np
import pytest
import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import ScoreArguments
from kronfluence.utils.dataset import DataLoaderKwargs
from safetensors import SafetensorError
from tiny_lm import eager_lm, make_records
from trak import TRAKer
from trak.modelout_functions import TASK_TO_MODELOUT
from transformers import AutoModelForCausalLM

from attribution.ekfac import InfluenceConfig, InfluenceScorer
from attribution.lm_data import collate, encode_sft
from attribution.lm_loss import forward_logits, token_losses
from attribution.tasks import CausalLMTask, classification_task, select_modules
from attribution.token_influence import parameter_tangents, token_influence
from attribution.trak_adapter import (
    CausalLMModelOutput,
    TrakConfig,
    TrakScorer,
    lm_batch,
    make_projector,
    use_eager_attention,
)


@pytest.fixture(scope="module")
def lm(trained_dir, tokenizer, records):
    model, items = eager_lm(trained_dir, tokenizer, records, 8)
    return model, items, tokenizer


def _analyzer(model, tokenizer, tmp):
    task = CausalLMTask(select_modules(model, "mlp"))
    analyzer = Analyzer(
        "raw",
        prepare_model(model, task),
        task,
        cpu=True,
        output_dir=tmp,
        disable_tqdm=True,
        log_level=logging.ERROR,
    )
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=lambda b: collate(b, tokenizer.pad_token_id)))
    return analyzer


def _scorer(model, tokenizer, tmp):
    task = CausalLMTask(select_modules(model, "mlp"))
    return InfluenceScorer(
        model,
        task,
        tmp,
        InfluenceConfig(train_batch_size=4),
        torch.device("cpu"),
        lambda b: collate(b, tokenizer.pad_token_id),
    )


def test_kronfluence_returns_none_and_skips_existing_scores(lm):
    """Why: compute_pairwise_scores returns None, and with an existing scores name it silently returns
    the *old* scores for new queries. Ours reads the scores back and uses a fresh name per call."""
    import copy

    model, items, tok = lm
    with tempfile.TemporaryDirectory() as tmp:
        an = _analyzer(copy.deepcopy(model), tok, tmp)
        an.fit_all_factors("f", dataset=items, per_device_batch_size=4)
        kw = {
            "factors_name": "f",
            "train_dataset": items,
            "per_device_query_batch_size": 2,
            "per_device_train_batch_size": 4,
        }
        assert an.compute_pairwise_scores("s", query_dataset=items[:2], **kw) is None
        first = an.load_pairwise_scores("s")["all_modules"]
        an.compute_pairwise_scores("s", query_dataset=items[2:4], **kw)
        assert torch.equal(an.load_pairwise_scores("s")["all_modules"], first)  # stale
    with tempfile.TemporaryDirectory() as tmp:
        ours = _scorer(copy.deepcopy(model), tok, tmp)
        ours.fit(items)
        a, b = ours.score(items[:2], items), ours.score(items[2:4], items)
        assert a.shape == (2, 8) and not torch.allclose(a, b)
        torch.testing.assert_close(ours.score(items[:2], items), a)


def test_partial_factor_files_are_refitted(lm):
    """Why: kronfluence trusts any factor file it finds; a kill mid-save leaves a truncated file that
    it would load. Ours refits unless its completion marker exists."""
    import copy

    model, items, tok = lm
    with tempfile.TemporaryDirectory() as tmp:
        ours = _scorer(copy.deepcopy(model), tok, tmp)
        ours.fit(items)
        good = ours.score(items[:2], items)
        files = sorted(p for p in (ours.work_dir).rglob("*.safetensors"))
        assert files
        for path in files:
            path.write_bytes(path.read_bytes()[:10])  # saves cut short
        # kronfluence itself skips fitting when the files exist, then cannot load them
        ours.analyzer.fit_all_factors(
            ours.factors_name, dataset=items, per_device_batch_size=4, factor_args=ours.factor_args
        )
        with pytest.raises(SafetensorError):
            ours.analyzer.load_all_factors(ours.factors_name)
        (ours.work_dir / f"{ours.factors_name}.done").unlink()
        ours.fit(items)
        torch.testing.assert_close(ours.score(items[:2], items), good)


def test_kronfluence_per_token_scores_are_per_position(lm):
    """Why: kronfluence's per-token scores split the parameter gradient by sequence position; position p
    mostly carries the loss of predicting token p+1, and the last prompt position carries the first
    response token's loss, so the response positions' scores do not add up to the example score. Ours
    takes kronfluence's preconditioned query gradient v and differentiates each token's own loss along
    it (forward mode): the tokens' rows add up to the example score."""
    import copy

    model, _, tok = lm
    records = make_records(6, seed=3)
    # one length for every item: kronfluence concatenates per-token scores across train batches
    items = [
        {k: v for k, v in encode_sft(tok, r, 48, pad_to_max_length=True).items() if k != "offsets"}
        for r in records
    ]
    response = torch.stack([i["labels"] != -100 for i in items])
    with tempfile.TemporaryDirectory() as tmp:
        ours = _scorer(copy.deepcopy(model), tok, tmp)
        ours.fit(items)
        example = ours.score(items[:2], items)
        per_position = _per_position(ours, items[:2], items)
        theirs = (per_position * response).sum(-1)
        assert ((theirs - example).abs() / example.abs()).max() > 0.01
        v = ours.preconditioned_gradients(items[:2], np.eye(2))
        tangents = parameter_tangents(ours.analyzer.model, v)

        def losses(m, b):
            return token_losses(forward_logits(m, b), b["labels"], "mean")

        rows = token_influence(ours.analyzer.model, losses, collate(items, tok.pad_token_id), tangents)
    torch.testing.assert_close(rows.sum(-1), example, rtol=1e-4, atol=0)


def _per_position(scorer, query, train):
    name = "per_position"
    scorer.analyzer.compute_pairwise_scores(
        scores_name=name,
        factors_name=scorer.factors_name,
        query_dataset=query,
        train_dataset=train,
        per_device_query_batch_size=len(query),
        per_device_train_batch_size=4,
        score_args=ScoreArguments(compute_per_token_scores=True),
    )
    return scorer.analyzer.load_pairwise_scores(name)["all_modules"]


def test_root_linear_model_is_wrapped():
    """Why: kronfluence's wrap_tracked_modules can only replace children; on a model that is itself an
    nn.Linear (logistic regression) the module ends up its own child and any later .to() recurses
    forever. Ours puts such a model in an nn.Sequential."""
    task = classification_task()
    broken = prepare_model(torch.nn.Linear(3, 2), task)
    with pytest.raises(RecursionError):
        broken.to("cpu")
    items = [(torch.randn(3), torch.tensor(i % 2)) for i in range(6)]
    with tempfile.TemporaryDirectory() as tmp:
        ours = InfluenceScorer(
            torch.nn.Linear(3, 2), task, tmp, InfluenceConfig(train_batch_size=3), torch.device("cpu")
        )
        ours.fit(items)
        assert ours.score(items[:2], items).shape == (2, 6)


def test_traker_has_no_causal_lm_output_so_we_provide_one(lm):
    """Why: traker's outputs are image / CLIP / text classification only. Ours scores SFT examples:
    an example's influence on itself is positive (it raises its own margin)."""
    import copy

    assert not any("causal" in k or "lm" in k.lower() for k in TASK_TO_MODELOUT)
    model, items, tok = lm
    with tempfile.TemporaryDirectory() as tmp:
        ours = TrakScorer(
            copy.deepcopy(model),
            CausalLMModelOutput(),
            tmp,
            TrakConfig(proj_dim=64),
            torch.device("cpu"),
            lm_batch,
            lambda b: collate(b, tok.pad_token_id),
        )
        ours.fit(items, items, [model.state_dict()])
        scores = ours.score(range(len(items))).numpy()
    assert np.isfinite(scores).all()
    assert (np.diag(scores) > 0).all()


def test_traker_vmap_rejects_sdpa_attention(lm, trained_dir):
    """Why: traker (and our gradsim) take per-example gradients under torch.func.vmap, which fails on
    transformers' sdpa attention. Ours switches a loaded model to eager attention."""
    _, items, _ = lm
    sdpa = AutoModelForCausalLM.from_pretrained(trained_dir, attn_implementation="sdpa").eval()
    batch = lm_batch(collate(items[:2], 0))
    grad = torch.func.vmap(
        torch.func.grad(CausalLMModelOutput.get_output, argnums=1), in_dims=(None, None, None, 0, 0, 0)
    )
    with pytest.raises(RuntimeError, match="vmap"):
        grad(sdpa, dict(sdpa.named_parameters()), dict(sdpa.named_buffers()), *batch)
    use_eager_attention(sdpa)
    out = grad(sdpa, dict(sdpa.named_parameters()), dict(sdpa.named_buffers()), *batch)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_traker_kernel_needs_ridge_with_few_examples(lm):
    """Why: with fewer training examples than proj_dim, X^T X is singular and traker's scores collapse
    to ~0 without lambda_reg. Ours defaults to a small ridge then."""
    import copy

    model, items, tok = lm
    grad_dim = sum(p.numel() for p in model.parameters())
    batch = lm_batch(collate(items, tok.pad_token_id))
    with tempfile.TemporaryDirectory() as tmp:
        raw = TRAKer(
            model=copy.deepcopy(model),
            task=CausalLMModelOutput(),
            train_set_size=len(items),
            save_dir=tmp,
            device="cpu",
            proj_dim=64,
            use_half_precision=False,
            lambda_reg=0.0,
            projector=make_projector(grad_dim, 64, torch.device("cpu"), torch.float32),
            logging_level=logging.ERROR,
        )
        raw.load_checkpoint(model.state_dict(), model_id=0)
        raw.featurize(batch, num_samples=len(items))
        raw.finalize_features()
        raw.start_scoring_checkpoint("x", model.state_dict(), 0, len(items))
        raw.score(batch, num_samples=len(items))
        collapsed = np.abs(raw.finalize_scores("x")).max()
    with tempfile.TemporaryDirectory() as tmp:
        ours = TrakScorer(
            copy.deepcopy(model),
            CausalLMModelOutput(),
            tmp,
            TrakConfig(proj_dim=64),
            torch.device("cpu"),
            lm_batch,
            lambda b: collate(b, tok.pad_token_id),
        )
        ours.fit(items, items, [model.state_dict()])
        kept = np.abs(ours.score(range(len(items))).numpy()).max()
    assert collapsed < 1e-6 < kept


def test_trak_target_chunks_match_one_chunk(lm):
    """Why: traker's finalize_scores holds the whole train x targets matrix in memory; ours scores
    targets in chunks (one traker experiment each) and must give the same numbers."""
    import copy

    model, items, tok = lm
    out = []
    for chunk in (3, 100):
        with tempfile.TemporaryDirectory() as tmp:
            ours = TrakScorer(
                copy.deepcopy(model),
                CausalLMModelOutput(),
                tmp,
                TrakConfig(proj_dim=64, target_chunk=chunk),
                torch.device("cpu"),
                lm_batch,
                lambda b: collate(b, tok.pad_token_id),
            )
            ours.fit(items, items, [model.state_dict()])
            out.append(ours.score(range(len(items))))
    torch.testing.assert_close(out[0], out[1])


def test_basic_projector_single_block_breaks_after_finalize():
    """Why: traker's BasicProjector with proj_dim <= block_size (one block) frees its only matrix in
    finalize_features (free_memory) and cannot project target gradients afterwards. Ours keeps at least
    two blocks, which are regenerated per call, with the same projection before and after."""
    from trak.projectors import BasicProjector, ProjectionType

    grads = torch.randn(3, 500)
    one_block = BasicProjector(
        grad_dim=500, proj_dim=64, seed=0, proj_type=ProjectionType.rademacher, device="cpu"
    )
    one_block.free_memory()
    with pytest.raises(AttributeError):
        one_block.project(grads, model_id=0)
    ours = make_projector(500, 64, torch.device("cpu"), torch.float32)
    before = ours.project(grads, model_id=0)
    ours.free_memory()
    torch.testing.assert_close(ours.project(grads, model_id=0), before)


def test_cached_projector_projects_as_basic_projector_without_regenerating():
    """Why: BasicProjector regenerates its random blocks for every batch (most of TRAK's CPU time).
    Ours builds the matrix once from the same generator states: the same projection, per model id."""
    from unittest import mock

    from trak.projectors import BasicProjector, ProjectionType

    from attribution.trak_adapter import CachedProjector

    grads = torch.randn(5, 700)
    kw = {
        "grad_dim": 700,
        "proj_dim": 96,
        "seed": 0,
        "proj_type": ProjectionType.rademacher,
        "device": "cpu",
        "block_size": 40,
    }
    basic, cached = BasicProjector(**kw), CachedProjector(**kw)
    for model_id in (0, 1, 0):
        torch.testing.assert_close(
            cached.project(grads, model_id=model_id), basic.project(grads, model_id=model_id)
        )
    with mock.patch.object(cached, "generate_sketch_matrix", side_effect=AssertionError("regenerated")):
        cached.project(grads, model_id=0)  # same model id: no regeneration
    expected = basic.project(grads, model_id=0)
    cached.free_memory()  # as finalize_features does, right before scoring
    with mock.patch.object(cached, "generate_sketch_matrix", side_effect=AssertionError("regenerated")):
        torch.testing.assert_close(cached.project(grads, model_id=0), expected)
    assert not BasicProjector(**kw).project(grads, 1).allclose(expected)  # another model id, another matrix


def test_cached_projector_over_budget_regenerates_like_basicmake_projector():
    from trak.projectors import ProjectionType

    from attribution.trak_adapter import CachedProjector

    small = CachedProjector(
        grad_dim=700,
        proj_dim=96,
        seed=0,
        proj_type=ProjectionType.rademacher,
        device="cpu",
        block_size=40,
        cache_bytes=700 * 96 * 4 - 1,
    )
    assert not small.fits()
    big = CachedProjector(
        grad_dim=700, proj_dim=96, seed=0, proj_type=ProjectionType.rademacher, device="cpu", block_size=40
    )
    grads = torch.randn(3, 700)
    torch.testing.assert_close(small.project(grads, 0), big.project(grads, 0))
    assert small._full is None and big._full is not None


def test_target_gradients_once_per_run_in_micro_batches(lm):
    """Why: kronfluence's pairwise scores put all queries through one forward pass (every target's
    activations and logits at once), a smaller query batch recomputes every training gradient per query
    batch, and every call (shard) recomputes the query gradients. Ours computes the targets'
    preconditioned gradients once, `query_batch_size` at a time, and scores each shard with one training
    pass per group of targets fitting `query_memory_mb`; the scores are kronfluence's with all queries in
    one batch, and a second scorer on the same work folder (a shard worker) reuses the stored gradients."""
    import copy
    from unittest import mock

    model, items, tok = lm
    queries = [dict(i) for i in items[:7]]
    with tempfile.TemporaryDirectory() as tmp:
        ours = _scorer(copy.deepcopy(model), tok, tmp)
        ours.config.query_batch_size = 3
        tracked = sum(p.numel() for m in ours._modules()[1] for p in m.original_module.parameters())
        ours.config.query_memory_mb = 3.5 * 4 * tracked / 2**20  # groups of 3 targets
        assert ours.targets_per_pass(7) == 3 and ours.targets_per_pass(2) == 2
        ours.fit(items)
        task = ours.task
        with (
            mock.patch.object(task, "compute_measurement", wraps=task.compute_measurement) as queries_run,
            mock.patch.object(task, "compute_train_loss", wraps=task.compute_train_loss) as train_run,
        ):
            shard_a, shard_b = ours.score(queries, items[:4]), ours.score(queries, items[4:])
        assert queries_run.call_count == 3  # 3 + 3 + 1 queries, once for both shards
        assert train_run.call_count == 3 * (1 + 1)  # 3 target groups x one batch of 4 per shard
        assert ours.target_gradients(queries).sizes == [3, 3, 1]

        # kronfluence's own pairwise scores, all queries in one batch, on the same fitted factors
        ours.analyzer.compute_pairwise_scores(
            "s",
            ours.factors_name,
            query_dataset=queries,
            train_dataset=items,
            per_device_query_batch_size=len(queries),
            per_device_train_batch_size=4,
            score_args=ours.score_args(),
        )
        theirs = ours.analyzer.load_pairwise_scores("s")["all_modules"]
        torch.testing.assert_close(torch.cat([shard_a, shard_b], dim=1), theirs, rtol=1e-4, atol=1e-3)

        worker = _scorer(copy.deepcopy(model), tok, tmp)
        worker.fit(items)
        with mock.patch.object(worker.task, "compute_measurement") as worker_queries:
            torch.testing.assert_close(worker.score(queries, items[:4]), shard_a)
        worker_queries.assert_not_called()


def test_unfinished_target_gradients_are_recomputed(lm):
    """Why: a kill while the target gradients are written leaves a partial folder. Ours trusts a folder
    only with its completion marker, and recomputes it otherwise."""
    import copy

    model, items, tok = lm
    with tempfile.TemporaryDirectory() as tmp:
        ours = _scorer(copy.deepcopy(model), tok, tmp)
        ours.fit(items)
        good = ours.score(items[:3], items)
        folder = ours.target_gradients(items[:3]).folder
        (folder / "done.json").unlink()
        for path in folder.glob("*.safetensors"):
            path.write_bytes(path.read_bytes()[:10])
        fresh = _scorer(copy.deepcopy(model), tok, tmp)
        fresh.fit(items)
        torch.testing.assert_close(fresh.score(items[:3], items), good)
