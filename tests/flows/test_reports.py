"""HTML run reports: every run kind renders from synthetic lake runs and from the quick demo's lake, text is
escaped, the CLI writes atomically and refuses unknown runs, and headless Chromium shows the pages with no
console errors and a screenshot that is not blank."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from assay_testing import run_cli, run_python

from flows import progress as progress_mod
from flows import reports
from flows.reports import html as h
from flows.reports import unlearning
from flows.reports.lakeview import LakeView
from storage import Lake, UserError
from storage.ingest import ingest

EVIL = "<script>alert('x')</script> & <b>bold</b>"


# ------------------------------------------------------------------------------------ synthetic lake
def _examples() -> tuple[list[dict], list[dict]]:
    train = []
    for i in range(16):
        domain = "math" if i % 2 == 0 else "code"
        level = i % 4 + 1
        response = (
            f"Step one: add {i} and {i + 1}.\nStep two: the sum is {2 * i + 1}.\n\\boxed{{{2 * i + 1}}}"
            if domain == "math"
            else f"def f{i}(x):\n    return x + {i}\n"
        )
        train.append(
            {
                "id": f"t{i}",
                "domain": domain,
                "difficulty": level,
                "prompt": f"Question {i} ({domain})",
                "response": response,
            }
        )
    train[3]["response"] = f"def evil():\n    return '{EVIL}'\n"  # must come out escaped everywhere
    targets = [
        {
            "id": f"g{i}",
            "domain": "math" if i < 3 else "code",
            "difficulty": i % 3 + 1,
            "prompt": f"Target {i}",
            "response": f"answer {i}",
        }
        for i in range(5)
    ]
    return train, targets


def _ingest(lake: Lake, tmp: Path, name: str, rows: list[dict]) -> None:
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ingest(lake, path, name)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\S+|\s+", text)


def build_synthetic_lake(root: Path) -> dict[str, str]:
    """One run of each kind a report knows, written as stages write them; returns kind -> run id."""
    rng = np.random.default_rng(0)
    lake = Lake(root / "lake")
    train, targets = _examples()
    _ingest(lake, root, "syn_train", train)
    _ingest(lake, root, "syn_targets", targets)
    versions = {d: lake.dataset_version(d) for d in ("syn_train", "syn_targets")}
    ids: dict[str, str] = {}
    domain = {r["id"]: r["domain"] for r in train + targets}

    with lake.run(
        "attribute", "ekfac", params={"level": "token"}, inputs={"datasets": versions}, model="synthetic"
    ) as run:
        pairs = [(t["id"], g["id"]) for t in train for g in targets]
        score = [rng.normal() + (1.5 if domain[a] == domain[b] else -0.5) for a, b in pairs]
        run.write("scores", pd.DataFrame(pairs, columns=["train_id", "target_id"]).assign(score=score))
        segments, tokens = [], []
        for t in train:
            for key in ("all", "domain=math", "domain=code"):
                for s, line in enumerate(t["response"].splitlines()):
                    segments.append(
                        {
                            "train_id": t["id"],
                            "target_id": key,
                            "segment": s,
                            "text": line,
                            "char_start": 0,
                            "char_end": len(line),
                            "score": rng.normal(),
                        }
                    )
                start = 0
                for p, tok in enumerate(_tokens(t["response"])):
                    value = 3.0 if t["id"] == "t3" and key == "all" else rng.normal()
                    tokens.append(
                        {
                            "train_id": t["id"],
                            "target_id": key,
                            "position": p,
                            "token_id": p,
                            "token": tok,
                            "char_start": start,
                            "char_end": start + len(tok),
                            "score": value,
                        }
                    )
                    start += len(tok)
        run.write("segment_scores", pd.DataFrame(segments))
        run.write("token_scores", pd.DataFrame(tokens))
        ids["attribute"] = run.run_id

    train_ids = [t["id"] for t in train]
    base = pd.DataFrame({"dataset": "syn_train", "example_id": train_ids})
    with lake.run(
        "curate",
        "mix",
        params={"by": "label:ppp_cluster"},
        inputs={"datasets": {"syn_train": versions["syn_train"]}},
    ) as run:
        run.write("weights", base.assign(copies=[3 if i % 2 else 1 for i in range(16)], loss_weight=1.0))
        steps = np.arange(20)
        tau = np.where(steps < 10, 5.0, 1.0)
        p_code = np.where(steps < 10, 0.6, 0.3)
        schedule = pd.DataFrame(
            {
                "step": np.repeat(steps, 2),
                "group_name": ["code", "math"] * 20,
                "tau": np.repeat(tau, 2),
                "probability": np.ravel(np.c_[p_code, 1 - p_code]),
            }
        )
        run.write("mixture_schedule", schedule)
        run.write(
            "metrics",
            pd.DataFrame(
                {
                    "name": ["pool"] * 3 + ["draws"] * 3,
                    "key": ["0", "1", "2"] * 2,
                    "value": [8, 5, 3, 8, 15, 9.0],
                }
            ),
        )
        ids["mix"] = run.run_id

    with lake.run(
        "curate",
        "dart",
        params={"strategy": "prop2diff"},
        inputs={"sources": {"syn_train": versions["syn_train"]}},
    ) as run:
        rows = []
        for i, t in enumerate(t for t in train if t["domain"] == "math"):
            n_trials = 2 + 2 * t["difficulty"]
            for k in range(n_trials):
                correct = i != 0 and k % 2 == 0  # the first query is never solved: uncovered
                rows.append(
                    {
                        "query_id": t["id"],
                        "dataset": "syn_train",
                        "trial": k,
                        "response": f"try {k}",
                        "correct": correct,
                        "verdict": "pass" if correct else "fail",
                        "message": "",
                        "generator": "replay",
                    }
                )
        run.write("samples", pd.DataFrame(rows))
        math_ids = [t["id"] for t in train if t["domain"] == "math"]
        run.write(
            "labels",
            pd.DataFrame(
                {
                    "dataset": "syn_train",
                    "example_id": math_ids,
                    "name": "dart_difficulty",
                    "value": np.linspace(0.2, 1.0, len(math_ids)),
                }
            ),
        )
        ids["dart"] = run.run_id

    with lake.run(
        "curate", "ppp", params={}, inputs={"datasets": {"syn_train": versions["syn_train"]}}
    ) as run:
        cluster = [
            0.0 if d == "math" else (1.0 if i % 3 else 2.0) for i, d in enumerate(t["domain"] for t in train)
        ]
        run.write("labels", base.assign(name="ppp_cluster", value=cluster))
        ids["ppp"] = run.run_id

    with lake.run(
        "curate", "presto", params={}, inputs={"datasets": {"syn_train": versions["syn_train"]}}
    ) as run:
        outcome = rng.integers(0, 4, len(train)).astype(float)
        p_rare = np.clip(0.15 + 0.2 * (outcome == 3) + rng.uniform(-0.1, 0.1, len(train)), 0.01, 0.99)
        run.write(
            "labels",
            pd.concat(
                [
                    base.assign(name="presto_p_rare", value=p_rare),
                    base.assign(name="presto_outcome", value=outcome),
                ]
            ),
        )
        ids["presto"] = run.run_id

    with lake.run("unlearn", "dmm", params={"forget": 3}, inputs={"scores": ids["attribute"]}) as run:
        rows = [
            ("klom95", "forget", 0.9),
            ("klom95", "retain", 0.3),
            ("klom95", "val", 0.35),
            ("klom95_floor", "forget", 0.1),
            ("klom95_floor", "retain", 0.1),
            ("klom95_floor", "val", 0.1),
            ("klom95_ceiling", "forget", 3.0),
            ("klom95_ceiling", "retain", 0.4),
            ("klom95_ceiling", "val", 0.5),
            ("loss", "forget/before", 0.5),
            ("loss", "forget/after", 1.4),
            ("loss", "forget/retrained", 1.6),
            ("loss", "retain/before", 0.5),
            ("loss", "retain/after", 0.55),
            ("loss", "retain/retrained", 0.52),
        ]
        run.write("metrics", pd.DataFrame(rows, columns=["name", "key", "value"]))
        ids["unlearn"] = run.run_id
    ids["ingest"] = lake.query("SELECT run_id FROM runs WHERE kind = 'ingest' ORDER BY started_at")["run_id"][
        0
    ]
    return ids


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, build_synthetic_lake(root)


EXPECTED = {  # run -> section titles its report must have, and the least number of charts
    "attribute": (
        [
            "Score distributions per target group",
            "Mean influence: (train domain, difficulty) x target domain",
            "Most helpful and most harmful training examples",
            "Token heatmaps",
            "Top segments",
        ],
        3,
    ),
    "mix": (
        [
            "Group mixture before and after",
            "Groups by label:ppp_cluster",
            "Mixture schedule over training (Cooldown)",
        ],
        3,
    ),
    "dart": (["DART: trials and correct responses against difficulty", "Uncovered queries (1)"], 1),
    "ppp": (["PPP clusters"], 1),
    "presto": (["PRESTO: probability of the rarest outcome, and its calibration"], 1),
    "unlearn": (
        ["KLoM per split, beside the floor and the ceiling", "Forget and retain loss, before and after"],
        2,
    ),
    "ingest": (["Examples of syn_train"], 1),
}


@pytest.mark.parametrize("run", list(EXPECTED))
def test_each_run_kind_renders(synthetic: tuple[Path, dict[str, str]], run: str) -> None:
    root, ids = synthetic
    path = reports.write_report(Lake(root / "lake"), ids[run], root / "out" / f"{run}.html")
    page = path.read_text()
    titles, charts = EXPECTED[run]
    for title in titles:
        assert h.esc(title) in page, title
    assert page.count('<img alt="') >= charts
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert not list(path.parent.glob(".*.tmp"))


def test_text_is_escaped_and_tokens_coloured_by_influence(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, ids = synthetic
    page = reports.report_html(Lake(root / "lake"), ids["attribute"])
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # in the example texts and segments
    # t3 has the largest total on target "all": its tokens are all strongly positive, so blue backgrounds.
    block = page[page.index("<b>t3</b>") :]
    block = block[: block.index("</div>")]
    colours = re.findall(r"background:(#[0-9a-f]{6})", block)
    assert colours and all(int(c[5:7], 16) > int(c[1:3], 16) for c in colours)  # more blue than red
    assert "&lt;/script&gt;" in block


def test_token_heatmap_maps_sign_to_colour() -> None:
    out = h.token_heatmap(["good", " bad", " <x>"], [2.0, -2.0, 0.0], limit=2.0)
    backgrounds = re.findall(r"background:#([0-9a-f]{6})", out)
    good, bad, zero = ([int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in backgrounds)
    assert good[2] > good[0] and bad[0] > bad[2]  # helpful blue, harmful red
    assert min(zero) > 230  # zero influence is near white
    assert "&lt;x&gt;" in out and 'title="2"' in out and 'title="-2"' in out


def test_unlearning_metric_names_are_read_by_meaning() -> None:
    metrics = pd.DataFrame(
        [
            ("klom95", "forget", 1.0),
            ("KLoM95_do_nothing", "retain", 2.0),
            ("klom_floor", "validation", 0.1),
            ("forget_loss_before", "", 0.4),
            ("loss_after", "retain", 0.5),
            ("lds", "all", 0.3),
        ],
        columns=["name", "key", "value"],
    )
    klom = unlearning.parse(metrics, "klom")
    assert set(map(tuple, klom[["split", "series"]].to_numpy())) == {
        ("forget", "klom95"),
        ("retain", "klom95_do_nothing"),
        ("validation", "klom_floor"),
    }
    assert [unlearning._role(s) for s in ("klom95", "klom95_do_nothing", "klom_floor")] == [
        "run",
        "ceiling",
        "floor",
    ]
    loss = unlearning.parse(metrics, "loss")
    assert set(map(tuple, loss[["split", "series"]].to_numpy())) == {
        ("forget", "before"),
        ("retain", "after"),
    }


def test_ppp_projection_uses_stored_embeddings_when_present(
    synthetic: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.reports import curation

    root, _ = synthetic
    with LakeView(Lake(root / "lake")) as view:
        points = view.q(
            "SELECT dataset, example_id, prompt, response FROM examples WHERE dataset = 'syn_train'"
        )
        xy, how = curation._projection(view, points)
        assert xy.shape == (len(points), 2) and how.startswith("PCA of TF-IDF")
        vectors = [[float(i), float(i % 2), 0.0] for i in range(len(points))]
        view._con.register("_emb_src", pd.DataFrame({"example_id": points["example_id"], "v": vectors}))
        view._con.execute("CREATE TEMP TABLE emb AS SELECT example_id, v::DOUBLE[] AS v FROM _emb_src")
        monkeypatch.setattr(curation, "_embedding_table", lambda _view: ("emb", "v"))
        xy, how = curation._projection(view, points)
        assert how == "PCA of the embeddings in emb.v"
        # The first principal direction is the one that varies most: the index column.
        assert abs(np.corrcoef(xy[:, 0], np.arange(len(points)))[0, 1]) > 0.99


def test_cli_report_default_path_out_and_unknown_run(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, ids = synthetic
    done = run_cli("report", ids["mix"], cwd=root)
    assert done.returncode == 0, done.stderr
    default = root / ".assay" / "reports" / f"{ids['mix']}.html"
    assert done.stdout.strip() == str(default) and "Mixture schedule" in default.read_text()
    out = run_cli("report", ids["unlearn"], "--out", "u.html", cwd=root)
    assert out.returncode == 0 and "KLoM per split" in (root / "u.html").read_text()
    before = sorted(p.name for p in root.rglob("*.html"))
    unknown = run_cli("report", "attribute-nope-123", cwd=root)
    assert unknown.returncode == 2 and unknown.stderr.startswith(
        "error: run 'attribute-nope-123' is not in the lake"
    )
    assert "Traceback" not in unknown.stderr
    taken = run_cli("report", ids["mix"], "--out", "u.html", cwd=root)  # the output policy: no silent replace
    assert taken.returncode == 2 and "--force" in taken.stderr and len(taken.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in root.rglob("*.html")) == before
    assert "KLoM per split" in (root / "u.html").read_text()
    created = run_cli("report", ids["mix"], "--out", "missing/r.html", cwd=root)  # parents are created
    assert created.returncode == 0 and "Mixture schedule" in (root / "missing" / "r.html").read_text()


def test_failed_run_reports_its_error(lake_dir: Path) -> None:
    lake = Lake(lake_dir)
    with pytest.raises(RuntimeError), lake.run("curate", "mix", params={"x": 1}) as run:
        run.write(
            "weights",
            pd.DataFrame({"dataset": ["d"], "example_id": ["e"], "copies": [1], "loss_weight": [1.0]}),
        )
        raise RuntimeError("boom <at> step 3")
    page = reports.report_html(lake, run.run_id)
    assert "failed" in page and "RuntimeError: boom &lt;at&gt; step 3" in page
    assert "the lake&#x27;s views show complete runs only" in page
    assert "Group mixture" not in page  # its partial rows are not shown


def test_unknown_run_is_a_user_error(lake_dir: Path) -> None:
    with pytest.raises(UserError, match="not in the lake"):
        reports.write_report(Lake(lake_dir), "nope", lake_dir.parent / "x.html")
    assert not (lake_dir.parent / "x.html").exists()


def test_report_link_artifact_is_a_no_op_outside_flows(tmp_path: Path) -> None:
    assert reports.report_link_artifact("run-1", tmp_path / "r.html") is None


PREFECT_SCRIPT = """
import sys
from flows.runtime import configure_prefect
configure_prefect()
from prefect.artifacts import Artifact
from flows.progress import progress
from flows.reports import report_link_artifact
from flows.runtime import flow

@flow
def job(path: str) -> str | None:
    assert sum(progress(range(10), "counting")) == 45
    return report_link_artifact("curate-mix-abc_1", path)

artifact_id = job(sys.argv[1])
artifact = Artifact.get("report-curate-mix-abc-1")
print("ARTIFACT", artifact_id, artifact.type, artifact.data.replace(chr(10), " "))
"""


def test_prefect_artifact_links_the_report_and_progress_goes_to_run_logs(tmp_path: Path) -> None:
    """Inside a flow run: a markdown artifact with a file:// link to the report, and progress log lines."""
    (tmp_path / ".assay" / "prefect").mkdir(parents=True)
    env = {
        **os.environ,
        "ASSAY_HOME": str(tmp_path / ".assay"),
        "PREFECT_HOME": str(tmp_path / ".assay" / "prefect"),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "ASSAY_QUIET": "0",
        # The ephemeral server's 20 s start-up limit is too short on a loaded 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    report = tmp_path / "r.html"
    done = run_python(PREFECT_SCRIPT, str(report), env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("ARTIFACT"))
    _, artifact_id, kind, data = line.split(" ", 3)
    assert artifact_id != "None" and kind == "markdown"
    assert report.as_uri() in data and "assay report of run curate-mix-abc_1" in data
    assert "counting: 10/10" in done.stdout + done.stderr


def test_progress_is_quiet_when_asked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ASSAY_PROGRESS", "1")
    monkeypatch.setenv("ASSAY_QUIET", "1")
    assert list(progress_mod.progress(range(5), "quiet")) == [0, 1, 2, 3, 4]
    progress_mod.say("not shown")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("ASSAY_QUIET", "0")
    assert list(progress_mod.progress(iter(range(3)), "counting", total=3)) == [0, 1, 2]
    progress_mod.say("shown")
    err = capsys.readouterr().err
    assert "counting" in err and "/3" in err and "shown" in err


# ------------------------------------------------------------------------------------ headless Chromium
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal Chrome DevTools Protocol client: one page, its console errors, a screenshot."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id, self.events = 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(
                    details.get("exception", {}).get("description") or details.get("text", "exception")
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(
                    " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                )
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found


def open_in_chromium(page: Path, screenshot: Path, width: int = 1280, height: int = 2000) -> list[str]:
    """Load `page` in headless Chromium; write a screenshot; return the console errors it logged."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helper processes too: all gone before the profile is removed
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
        try:
            deadline = time.monotonic() + 60
            ws_url = None
            while ws_url is None:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if match := re.search(r"DevTools listening on (ws://\S+)", line):
                    ws_url = match.group(1)
            tools = DevTools(ws_url)
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                tools.send(f"{domain}.enable", session=session)
            tools.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session,
            )
            tools.send("Page.navigate", {"url": page.absolute().as_uri()}, session)
            tools.wait_for("Page.loadEventFired")
            tools.drain(1.0)  # late console messages
            shot = tools.send("Page.captureScreenshot", {"format": "png"}, session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            errors = tools.errors()
            tools.send("Browser.close")
            tools.ws.close()
            return errors
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)
            _end_process_group(proc.pid)


def _end_process_group(group: int, timeout: float = 60) -> None:
    """Kill what is left of a process group and wait until it is gone. Chromium's helpers outlive the
    browser process for a moment and still write into the profile: removing it before they are gone
    failed with "Directory not empty" on a loaded machine. The timeout is only a safety net."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"process group {group} still running after {timeout} s")


def distinct_colours(png: Path) -> int:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB")).reshape(-1, 3)
    packed = (pixels[:, 0].astype(np.uint32) << 16) | (pixels[:, 1].astype(np.uint32) << 8) | pixels[:, 2]
    return len(np.unique(packed))


needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="Debian's chromium is not installed (CI installs it: apt-get install -y chromium)",
)


@needs_chromium
def test_browser_shows_every_kind_without_console_errors(synthetic: tuple[Path, dict[str, str]]) -> None:
    root, ids = synthetic
    index = reports.write_demo_report(Lake(root / "lake"), root / "all")
    page = index.read_text()
    assert all(f'id="{h.anchor(r)}"' in page for r in ids.values())
    assert all((root / "all" / f"{r}.html").exists() for r in ids.values())
    errors = open_in_chromium(index, root / "all.png")
    assert errors == []
    assert distinct_colours(root / "all.png") > 50  # charts, not a blank or one-colour page


def test_browser_reports_a_broken_page(tmp_path: Path) -> None:
    """The console check can fail: a page with a script error is caught."""
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (CI installs it: apt-get install -y chromium)")
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); undefinedCall();</script>"
        "</body></html>"
    )
    errors = open_in_chromium(bad, tmp_path / "bad.png", 400, 300)
    assert any("boom" in e for e in errors) and any("undefinedCall" in e for e in errors)
    assert distinct_colours(tmp_path / "bad.png") > 1


# ------------------------------------------------------------------------------------ the demo's lake
@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    done = run_cli("demo", "--quick", cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


DEMO_SECTIONS = {  # a run of this kind in the demo must show at least one of these sections
    "attribute": ("Score distributions per target group",),
    "curate": (
        "Group mixture before and after",
        "DART: trials",
        "Mixture schedule",
        "PPP clusters",
        "PRESTO:",
        "Labels written",
    ),
    "unlearn": ("KLoM per split", "Forget and retain loss"),
    "ingest": ("Examples of ",),
}


def test_demo_lake_reports_every_run(demo_lake: Path) -> None:
    lake = Lake(demo_lake / "lake")
    index = reports.write_demo_report(lake, demo_lake / "reports")
    runs = lake.query("SELECT run_id, kind FROM runs WHERE status = 'complete'")
    assert len(runs) >= 2
    text = index.read_text()
    for run_id, kind in runs.itertuples(index=False):
        own = (demo_lake / "reports" / f"{run_id}.html").read_text()
        assert f'id="{h.anchor(run_id)}"' in text and "What ran" in own
        if kind in DEMO_SECTIONS:
            assert any(h.esc(s) in own for s in DEMO_SECTIONS[kind]), (run_id, kind)
    if chromium() is not None:
        errors = open_in_chromium(index, demo_lake / "index.png")
        assert errors == []
        assert distinct_colours(demo_lake / "index.png") > 50


def test_demo_lake_cli_report(demo_lake: Path) -> None:
    run_id = Lake(demo_lake / "lake").query("SELECT run_id FROM runs WHERE status = 'complete' LIMIT 1")[
        "run_id"
    ][0]
    done = run_cli("report", run_id, cwd=demo_lake)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == demo_lake / ".assay" / "reports" / f"{run_id}.html"
    assert "What ran" in Path(done.stdout.strip()).read_text()
