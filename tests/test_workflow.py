"""The workflow as a whole: lint, the reference DAG offline, the demo end to end, and
config-driven partial reruns. The demo runs once per session, in a temporary copy of the
repository (the `demo_run` fixture in conftest.py, shared with the SLURM test), and the
tests below read what it produced."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from demo_workflow import DEMO_CONFIG, DEMO_EDITS, REPO, copy_repo, snakemake


def scheduled_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    counts = {}
    in_table = False
    for line in dry_run_output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match and match.group(1) != "total":
                counts[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


def test_lint_passes():
    result = snakemake(REPO, "--lint", "--configfile", "config/demo.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_reference_dag_builds_offline(tmp_path):
    work = copy_repo(tmp_path / "repo")
    result = snakemake(work, "-n", "--cores", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = scheduled_jobs(result.stdout)
    for rule in (
        "prepare_model",
        "fetch_construction",
        "split",
        "activations",
        "fit_directions",
        "edit_model",
        "benchmark_questions",
        "generate_answers",
        "gather_answers",
        "fetch_official_evaluator",
        "download_judge",
        "judge_official",
        "stats",
        "figures",
        "direction_figures",
        "fetch_xstest",
        "xstest_questions",
        "kl_divergence",
        "kl_summary",
        "compare_conditions",
        "xstest_stats",
        "tradeoff",
    ):
        assert rule in jobs, f"{rule} missing from the reference DAG: {jobs}"
    assert "refusal_tune" not in jobs and "judge_strmatch" not in jobs
    # benchmark and XSTest: baseline + one edit; held-out prompts: the baseline only (its own
    # answers to the held-out safe prompts are what KL is teacher-forced along); one shard each
    assert jobs["generate_answers"] == 2 + 2 + 1
    assert jobs["kl_divergence"] == 2  # one edit x (held-out safe, XSTest safe)
    assert jobs["judge_official"] == 2  # benchmark and XSTest


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5000, f"{path} looks empty"


@pytest.mark.slow
def test_demo_produces_every_declared_output(demo_run):
    work = demo_run
    result = snakemake(work, "--configfile", DEMO_CONFIG, "--summary")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:] if "\t" in line]
    assert len(rows) > 30
    not_ok = [(r[0], r[4]) for r in rows if r[4] not in ("ok", "removed temp file")]
    assert not not_ok, not_ok

    split = pd.read_csv(work / "results/split/prompt_split.csv")
    assert list(split.columns) == ["id", "prompt", "label", "category", "split", "test_group"]
    assert split["category"].nunique() == 12

    with __import__("numpy").load(work / "results/directions/refusal_directions.npz") as npz:
        directions = npz["directions"]
        assert directions.ndim == 2
        assert abs(float((directions**2).sum(axis=1).mean()) - 1.0) < 1e-4

    for condition in ("baseline", "edited_reference"):
        lines = (work / f"results/answers/benchmark/{condition}.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert [r["question_id"] for r in records] == list(range(1, len(records) + 1))
        assert all(r["model_id"] == condition for r in records)
        judgments = pd.read_csv(work / f"results/judgments/strmatch/benchmark/{condition}.csv")
        assert len(judgments) == len(records)
        assert set(judgments["score"].dropna().unique()) <= {0, 1}

    summary = (work / "results/stats/strmatch/reference/summary.md").read_text()
    assert "McNemar" in summary
    for png in (work / "results/figures").rglob("*.png"):
        _png(png)
    # the edited checkpoint is an intermediate file, removed once its answers exist
    assert not (work / "results/models/edited_reference").exists()


@pytest.mark.slow
def test_demo_edit_lowers_refusal(demo_run):
    """The refusal-tuned demo organism refuses clearly more before the edit than after."""
    frames = {
        c: pd.read_csv(demo_run / f"results/judgments/strmatch/benchmark/{c}.csv")
        for c in ("baseline", "edited_reference")
    }
    refusal = {c: float((f["score"] == 0).mean()) for c, f in frames.items()}
    assert refusal["baseline"] >= refusal["edited_reference"] + 0.2, refusal


@pytest.mark.slow
def test_demo_dose_response_puts_the_variants_side_by_side(demo_run):
    table = pd.read_csv(demo_run / "results/stats/strmatch/dose_response.csv").set_index("edit")
    assert sorted(table.index) == sorted(DEMO_EDITS)
    assert table.loc["reference_s050", "scale"] == 0.5 and table.loc["reference", "scale"] == 1.0
    # half the projection leaves part of the direction in what the layers write; the full one none
    assert table.loc["reference", "layer_writes_ratio_median"] < 1e-3
    assert 0.2 < table.loc["reference_s050", "layer_writes_ratio_median"] < 0.9
    assert table[["kl_answer_mean_heldout", "xstest_safe_refusal_change"]].notna().all().all()
    adjacent = pd.read_csv(demo_run / "results/stats/strmatch/dose_response_adjacent.csv")
    assert adjacent[["weaker", "stronger"]].values.tolist() == [["reference_s050", "reference"]]
    _png(demo_run / "results/figures/strmatch/dose_response.png")


@pytest.mark.slow
def test_adding_a_sweep_point_runs_only_that_point(demo_run):
    """A new scale in a finished sweep: its own edit, answers, judgments, KL and stats, plus the
    tables that compare variants; nothing of the baseline or of the finished points."""
    config = yaml.safe_load((demo_run / DEMO_CONFIG).read_text())
    config["edit"]["sweep"] = {"method": ["reference"], "scale": [0.25, 0.5]}
    (demo_run / "config/demo_sweep_more.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(demo_run, "-n", "--configfile", "config/demo_sweep_more.yaml", "--cores", "2")
    assert result.returncode == 0, result.stderr
    jobs = scheduled_jobs(result.stdout)
    per_point = {
        "edit_model": 1,
        "verify_edit": 1,
        "generate_answers": 3,
        "gather_answers": 3,
        "judge_strmatch": 3,
        "kl_divergence": 2,
        "kl_summary": 1,
        "stats": 1,
        "figures": 1,
        "heldout_stats": 1,
    }
    aggregates = {
        "compare_conditions": 2,
        "kl_comparisons": 1,
        "xstest_stats": 1,
        "tradeoff": 1,
        "dose_response": 1,
        "all": 1,
    }
    assert jobs == {**per_point, **aggregates}, jobs
    conditions = set(re.findall(r"condition=(\w+)", result.stdout))
    edits = set(re.findall(r"edit=(\w+)", result.stdout))
    assert conditions == {"edited_reference_s025"} and edits == {"reference_s025"}, (conditions, edits)


@pytest.mark.slow
def test_changing_alpha_reruns_only_what_depends_on_it(demo_run, tmp_path):
    config = yaml.safe_load((demo_run / DEMO_CONFIG).read_text())
    config["stats"]["alpha"] = 0.1
    changed = demo_run / "config" / "demo_alpha.yaml"
    # keep the key order, as a user editing one value would: Snakemake compares dict params
    # in order, so a re-sorted config counts as changed everywhere
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(demo_run, "-n", "--configfile", str(changed), "--cores", "2")
    assert result.returncode == 0, result.stderr
    jobs = scheduled_jobs(result.stdout)
    depends_on_alpha = {
        "stats",
        "heldout_stats",
        "figures",
        "kl_summary",
        "kl_comparisons",
        "compare_conditions",
        "xstest_stats",
        "tradeoff",
        "dose_response",
    }
    assert set(jobs) - {"all"} <= depends_on_alpha, jobs
    assert "stats" in jobs


@pytest.mark.slow
def test_rerun_without_changes_has_nothing_to_do(demo_run):
    result = snakemake(demo_run, "-n", "--configfile", DEMO_CONFIG, "--cores", "2")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_edit_variants_share_one_baseline(tmp_path):
    """Two edit variants: each gets its own checkpoint, answers, judgments and stats,
    while the baseline is generated and judged once."""
    work = copy_repo(tmp_path / "repo")
    config = yaml.safe_load((work / "config/demo.yaml").read_text())
    config["edit"]["methods"] = ["reference", "norm_aware"]
    config["edit"].pop("sweep", None)
    (work / "config/two_edits.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(work, "-n", "--configfile", "config/two_edits.yaml", "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = scheduled_jobs(result.stdout)
    promptsets = 3  # benchmark + held-out check + XSTest stand-in
    assert jobs["edit_model"] == 2 and jobs["verify_edit"] == 2
    assert jobs["generate_answers"] == (1 + 2) * promptsets
    assert jobs["judge_strmatch"] == (1 + 2) * promptsets
    assert jobs["stats"] == 2 and jobs["figures"] == 2
    # KL on the demo config's held-out safe prompts only, per edit
    assert jobs["kl_divergence"] == 2 * 1 and jobs["kl_summary"] == 2 and jobs["kl_comparisons"] == 1
    assert jobs["compare_conditions"] == 2  # benchmark and XSTest: edit against edit
    assert jobs["xstest_stats"] == 1 and jobs["tradeoff"] == 1
    baseline_jobs = re.findall(r"output: results/answers/benchmark/baseline/shard", result.stdout)
    assert len(baseline_jobs) == 1


@pytest.mark.slow
def test_demo_measures_the_cost_of_every_edit(demo_run):
    """KL tables per edit and harmless prompt set, XSTest over-refusal, edit against edit, trade-off."""
    work = demo_run
    safe = {"heldout": 0, "xstest": 0}
    for promptset in safe:
        questions = [
            json.loads(line) for line in (work / f"results/questions/{promptset}.jsonl").read_text().splitlines()
        ]
        safe[promptset] = sum(q["label"] == "safe" for q in questions)
    assert safe["xstest"] == 20
    for edit in DEMO_EDITS:
        for promptset, n_safe in safe.items():
            kl = pd.read_csv(work / f"results/cost/{edit}/kl_{promptset}.csv")
            assert list(kl.columns) == [
                "question_id",
                "prompt_id",
                "promptset",
                "category",
                "kl_first",
                "kl_answer_mean",
                "kl_answer_max",
                "tokens",
                "generated_tokens",
            ]
            assert len(kl) == n_safe and (kl["promptset"] == promptset).all()
            assert (kl[["kl_first", "kl_answer_mean", "kl_answer_max"]] >= 0).all().all()
            assert (kl["kl_answer_max"] >= kl["kl_answer_mean"] - 1e-12).all()
            assert kl["kl_answer_mean"].mean() > 0  # the edit moved the model
            assert kl["tokens"].max() <= 32
        summary = pd.read_csv(work / f"results/cost/{edit}/kl_summary.csv")
        assert {"all"} < set(summary["category"]) and set(summary["promptset"]) == set(safe)
        _png(work / f"results/figures/cost/{edit}/kl_ecdf.png")
        text = (work / f"results/stats/strmatch/{edit}/summary.md").read_text()
        assert "KL(baseline || edited)" in text and "XSTest" in text

    refusal = pd.read_csv(work / "results/stats/strmatch/xstest/refusal.csv")
    assert set(refusal["condition"]) == {"baseline", *(f"edited_{e}" for e in DEMO_EDITS)}
    assert set(refusal["label"]) == {"safe", "unsafe"}
    assert (refusal[refusal["label"] == "safe"]["n"] + refusal[refusal["label"] == "safe"]["n_missing"] == 20).all()
    per_type = pd.read_csv(work / "results/stats/strmatch/xstest/per_type.csv")
    assert per_type["type"].nunique() >= 10

    pair = tuple(f"edited_{edit}" for edit in DEMO_EDITS)
    for promptset in ("benchmark", "xstest"):
        comparisons = pd.read_csv(work / f"results/stats/strmatch/comparisons/{promptset}.csv")
        found = comparisons[comparisons["condition_a"].isin(pair) & comparisons["condition_b"].isin(pair)]
        assert len(found) >= 1, comparisons
        row = found.iloc[0]
        cells = row[["both_comply", "a_refuses_b_complies", "a_complies_b_refuses", "both_refuse"]].sum()
        assert cells == row["n_pairs"] and 0 <= row["mcnemar_p"] <= 1
    kl_pairs = pd.read_csv(work / "results/cost/kl_comparisons.csv")
    assert set(kl_pairs["promptset"]) == set(safe) and len(kl_pairs) == 2 * 3

    tradeoff = pd.read_csv(work / "results/stats/strmatch/tradeoff.csv")
    assert sorted(tradeoff["edit"]) == sorted(DEMO_EDITS)
    assert (
        tradeoff[["benchmark_refusal_change", "kl_answer_mean_heldout", "xstest_safe_refusal_change"]]
        .notna()
        .all()
        .all()
    )
    _png(work / "results/figures/strmatch/tradeoff.png")


# ---------------------------------------------------------------- bad inputs never destroy finished work


def _results_state(work: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(work)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in (work / "results").rglob("*")
        if p.is_file()
    }


def _edit_config(work: Path, name: str, change, base: str = DEMO_CONFIG) -> str:
    """``base`` (by default the finished demo run's config) with one change, saved as config/<name>."""
    config = yaml.safe_load((work / base).read_text())
    change(config)
    (work / "config" / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return f"config/{name}"


BENCHMARK = "resources/demo/benchmark_questions.jsonl"
CONSTRUCTION = "resources/demo/construction_prompts.csv"


def _edit_lines(change):
    """A change to the file's lines (a list of strings, no newlines)."""

    def edit(text: str) -> str:
        lines = text.splitlines()
        change(lines)
        return "".join(line + "\n" for line in lines)

    return edit


def _drop_turns(lines):
    record = json.loads(lines[4])
    del record["turns"]
    lines[4] = json.dumps(record)


# (what, config change or None, file and its edit or None, fragments the dry run must print)
BAD_INPUTS = [
    (
        "wrong construction.sha256",
        lambda c: c["construction"].update(sha256="0" * 64),
        None,
        ["construction.sha256", "SHA-256 mismatch", CONSTRUCTION],
    ),
    (
        "missing construction file",
        lambda c: c["construction"].update(path="resources/demo/nowhere.csv"),
        None,
        ["construction.path", "resources/demo/nowhere.csv does not exist"],
    ),
    (
        "unknown generation.engine",
        lambda c: c["generation"].update(engine="fastest"),
        None,
        ["generation", "engine", "fastest"],
    ),
    (
        "benchmark: duplicate id",
        None,
        (BENCHMARK, _edit_lines(lambda ls: ls.insert(3, ls[2]))),
        [BENCHMARK, "line 4", "expected 4, got 3"],
    ),
    (
        "benchmark: out-of-order ids",
        None,
        (BENCHMARK, _edit_lines(lambda ls: ls.insert(0, ls.pop(1)))),
        [BENCHMARK, "line 1", "expected 1, got 2"],
    ),
    ("benchmark: missing turns", None, (BENCHMARK, _edit_lines(_drop_turns)), [BENCHMARK, "line 5", "'turns'"]),
    (
        "benchmark: not JSON",
        None,
        (BENCHMARK, _edit_lines(lambda ls: ls.__setitem__(6, ls[6][:-5]))),
        [BENCHMARK, "line 7", "not valid JSON"],
    ),
    (
        "benchmark: string id",
        None,
        (BENCHMARK, _edit_lines(lambda ls: ls.__setitem__(1, ls[1].replace('"question_id": 2', '"question_id": "2"')))),
        [BENCHMARK, "line 2", "must be an integer"],
    ),
    ("benchmark: empty file", None, (BENCHMARK, lambda text: ""), [BENCHMARK, "the file is empty"]),
    (
        "construction: bad label",
        None,
        (CONSTRUCTION, _edit_lines(lambda ls: ls.__setitem__(3, ls[3].replace(",safe,", ",harmless,")))),
        [CONSTRUCTION, "line 4", "'harmless'"],
    ),
]


@pytest.mark.slow
def test_bad_inputs_fail_the_dry_run_delete_nothing_and_restoring_has_nothing_to_do(demo_run):
    """Each bad value or file fails `snakemake -n` naming the key or file (and line); no
    finished output is touched, and with the good value back there is nothing to do."""
    work = demo_run
    before = _results_state(work)
    for what, config_change, file_edit, fragments in BAD_INPUTS:
        configfile = _edit_config(work, "bad.yaml", config_change) if config_change else DEMO_CONFIG
        original = None
        if file_edit:
            path, edit = file_edit
            original = (work / path).read_bytes()
            (work / path).write_text(edit(original.decode()))
        try:
            result = snakemake(work, "-n", "--configfile", configfile, "--cores", "2")
        finally:
            if original is not None:
                (work / file_edit[0]).write_bytes(original)  # restored bytes, with a new mtime
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{what}: the dry run passed"
        for fragment in fragments:
            assert fragment in output, f"{what}: {fragment!r} not in\n{output[-3000:]}"
        assert _results_state(work) == before, what
    result = snakemake(work, "-n", "--configfile", DEMO_CONFIG, "--cores", "2")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_changed_local_benchmark_is_seen(demo_run):
    """Editing the benchmark file (same path) reruns its job, as a changed path does."""
    changed = _edit_config(
        demo_run, "other_benchmark.yaml", lambda c: c["benchmark"].update(path="resources/demo/copy.jsonl")
    )
    shutil.copy(demo_run / BENCHMARK, demo_run / "resources/demo/copy.jsonl")
    result = snakemake(demo_run, "-n", "--configfile", changed, "--cores", "2")
    assert result.returncode == 0, result.stderr
    assert "benchmark_questions" in scheduled_jobs(result.stdout)
    path = demo_run / BENCHMARK
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b"brutal roast", b"gentle roast"))
        result = snakemake(demo_run, "-n", "--configfile", DEMO_CONFIG, "--cores", "2")
    finally:
        path.write_bytes(original)
    assert result.returncode == 0, result.stderr
    assert "benchmark_questions" in scheduled_jobs(result.stdout)


@pytest.mark.slow
def test_report_front_page_shows_the_headline_and_every_table(demo_run):
    result = snakemake(demo_run, "--configfile", DEMO_CONFIG, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (demo_run / "report.html").read_text()
    summary = (demo_run / "results/stats/strmatch/reference/summary.md").read_text()
    sentences = [s for s in summary.split("\n\n")[1:] if s.strip()]
    # the landing page (the workflow description) holds the headline sentences and the figure
    start = html.index("Headline")
    front = html[start : start + 200_000]
    for sentence in sentences[:3]:
        assert sentence.strip().split(".")[0][:60] in front, sentence
    assert "<svg" in front
    for table in ("direction_fit_report.csv", "category_generalization_table.csv"):
        assert table in html, table


def test_a_failed_run_leaves_no_edited_checkpoint_and_says_what_to_do(tmp_path):
    """A job that fails for real (the benchmark from the Hub, offline) ends the run; the
    onerror handler removes a temporary edited checkpoint that would otherwise stay."""
    work = copy_repo(tmp_path / "repo")
    reference = yaml.safe_load((work / "config/config.yaml").read_text())
    configfile = _edit_config(
        work, "hub_benchmark.yaml", lambda c: c.update(benchmark=reference["benchmark"]), base="config/demo.yaml"
    )
    leftover = work / "results/models/edited_reference"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"\0" * 1024)
    result = snakemake(work, "--configfile", configfile, "--cores", "1", "results/questions/benchmark.jsonl")
    assert result.returncode != 0
    log = (work / "logs/benchmark_questions.log").read_text()
    assert "could not fetch the benchmark file question.jsonl of sorry-bench/sorry-bench-202503" in log
    assert "HF_HUB_OFFLINE is set" in log and "To do:" in log
    assert not leftover.exists()
    assert "removed the temporary edited checkpoint" in result.stderr


def test_reference_dry_run_checks_the_downloaded_construction_hash(tmp_path):
    """With the construction CSV already downloaded, a wrong construction.sha256 fails the
    dry run (before, the split job deleted the finished split and then failed)."""
    import hashlib

    work = copy_repo(tmp_path / "repo")
    url = yaml.safe_load((work / "config/config.yaml").read_text())["construction"]["url"]
    downloaded = work / "resources/construction" / hashlib.sha256(url.encode()).hexdigest()[:12]
    downloaded.mkdir(parents=True)
    shutil.copy(work / "resources/demo/construction_prompts.csv", downloaded / "construction_prompts.csv")
    result = snakemake(work, "-n", "--cores", "4")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config construction.sha256" in output and "SHA-256 mismatch" in output, output[-3000:]


def test_gemma3_dag_builds_offline(tmp_path):
    """config/gemma3.yaml: model from the chunk packages, tune, three edits each verified, the
    benchmark, held-out and XSTest prompt sets, the cost, the arditi selection, the dose-response."""
    work = copy_repo(tmp_path / "repo")
    result = snakemake(work, "-n", "--configfile", "config/gemma3.yaml", "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = scheduled_jobs(result.stdout)
    edits, promptsets = 3, 3
    for rule in (
        "prepare_model",
        "refusal_tune",
        "activations",
        "fit_directions",
        "direction_figures",
        "select_arditi_direction",
        "xstest_questions",
        "tradeoff",
        "dose_response",
    ):
        assert jobs.get(rule) == 1, f"{rule}: {jobs}"
    assert jobs["edit_model"] == edits and jobs["verify_edit"] == edits
    assert jobs["generate_answers"] == (1 + edits) * promptsets
    assert jobs["judge_strmatch"] == (1 + edits) * promptsets
    assert jobs["stats"] == edits and jobs["figures"] == edits and jobs["heldout_stats"] == edits
    assert jobs["kl_divergence"] == edits * 2  # held-out safe and XSTest safe prompts
    # the template file is an input of the prepare rule: editing it rebuilds the model
    assert re.search(r"rule prepare_model:\n\s+input: resources/chat_templates/gemma_turn\.jinja", result.stdout)
