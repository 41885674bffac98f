"""The workflow as a whole: lint, the reference DAG offline, the demo end to end, and
config-driven partial reruns. The demo run happens once, in a temporary copy of the
repository, and the tests below read what it produced."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line and (REPO / line).is_file()]


def copy_repo(dest: Path) -> Path:
    for rel in repo_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


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
    ):
        assert rule in jobs, f"{rule} missing from the reference DAG: {jobs}"
    assert "refusal_tune" not in jobs and "judge_strmatch" not in jobs
    assert jobs["generate_answers"] == 2  # baseline + one edit, one shard each


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """Run the whole demo DAG once in a temporary copy of the repository."""
    work = copy_repo(tmp_path_factory.mktemp("demo") / "repo")
    result = snakemake(work, "--configfile", "config/demo.yaml", "--cores", "2")
    if result.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log"))
        )
        pytest.fail(f"demo run failed:\n{result.stderr[-5000:]}\n{logs}")
    return work


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5000, f"{path} looks empty"


@pytest.mark.slow
def test_demo_produces_every_declared_output(demo_run):
    work = demo_run
    result = snakemake(work, "--configfile", "config/demo.yaml", "--summary")
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
def test_changing_alpha_reruns_only_what_depends_on_it(demo_run, tmp_path):
    config = yaml.safe_load((demo_run / "config/demo.yaml").read_text())
    config["stats"]["alpha"] = 0.1
    changed = demo_run / "config" / "demo_alpha.yaml"
    # keep the key order, as a user editing one value would: Snakemake compares dict params
    # in order, so a re-sorted config counts as changed everywhere
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(demo_run, "-n", "--configfile", str(changed), "--cores", "2")
    assert result.returncode == 0, result.stderr
    jobs = scheduled_jobs(result.stdout)
    assert set(jobs) - {"all"} <= {"stats", "heldout_stats", "figures"}, jobs
    assert "stats" in jobs


@pytest.mark.slow
def test_rerun_without_changes_has_nothing_to_do(demo_run):
    result = snakemake(demo_run, "-n", "--configfile", "config/demo.yaml", "--cores", "2")
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" in result.stdout + result.stderr


def test_edit_variants_share_one_baseline(tmp_path):
    """Two edit variants: each gets its own checkpoint, answers, judgments and stats,
    while the baseline is generated and judged once."""
    work = copy_repo(tmp_path / "repo")
    config = yaml.safe_load((work / "config/demo.yaml").read_text())
    config["edit"]["methods"] = ["reference", "norm_aware"]
    (work / "config/two_edits.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(work, "-n", "--configfile", "config/two_edits.yaml", "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = scheduled_jobs(result.stdout)
    promptsets = 2  # benchmark + held-out check
    assert jobs["edit_model"] == 2 and jobs["verify_edit"] == 2
    assert jobs["generate_answers"] == (1 + 2) * promptsets
    assert jobs["judge_strmatch"] == (1 + 2) * promptsets
    assert jobs["stats"] == 2 and jobs["figures"] == 2
    baseline_jobs = re.findall(r"output: results/answers/benchmark/baseline/shard", result.stdout)
    assert len(baseline_jobs) == 1


def test_gemma3_dag_builds_offline(tmp_path):
    """config/gemma3.yaml: model from the chunk packages, tune, three edits each verified, both prompt sets."""
    work = copy_repo(tmp_path / "repo")
    result = snakemake(work, "-n", "--configfile", "config/gemma3.yaml", "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = scheduled_jobs(result.stdout)
    edits, promptsets = 3, 2
    for rule in ("prepare_model", "refusal_tune", "activations", "fit_directions", "direction_figures"):
        assert jobs.get(rule) == 1, f"{rule}: {jobs}"
    assert jobs["edit_model"] == edits and jobs["verify_edit"] == edits
    assert jobs["generate_answers"] == (1 + edits) * promptsets
    assert jobs["judge_strmatch"] == (1 + edits) * promptsets
    assert jobs["stats"] == edits and jobs["figures"] == edits and jobs["heldout_stats"] == edits
    # the template file is an input of the prepare rule: editing it rebuilds the model
    assert re.search(r"rule prepare_model:\n\s+input: resources/chat_templates/gemma_turn\.jinja", result.stdout)
