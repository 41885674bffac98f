import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

# The demo DAG runs once per test session, in two stages: up to the refusal-tuned model, then
# the rest. The SLURM test starts its own run from the first stage while the second runs, and
# compares with it at the end. Under pytest-xdist (pytest.ini: `-n auto --dist loadfile`) the
# workers share one run through a folder beside their own temporary folders; a lock per stage
# lets the first worker that needs a stage run it and the others wait for it.
DEMO_STAGES = {
    # the rules as targets: prepare_model, split and refusal_tune, and the benchmark questions
    # the tune reads (`--until` stops before the tune: Snakemake issue 823)
    "tuned": ["refusal_tune", "benchmark_questions"],
    "all": [],
}
# test modules that use the demo run, handed out first: they hold the suite's longest chain
DEMO_MODULES = ["test_workflow.py", "test_slurm.py"]


@contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _demo_stage(tmp_path_factory, stage: str) -> Path:
    from demo_workflow import DEMO_CONFIG, copy_repo, snakemake, write_two_edit_config

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-demo"
    root.mkdir(exist_ok=True)
    work, done, failed = root / "repo", root / f"{stage}.done", root / "failed"
    with _exclusive(root / f"{stage}.lock"):
        if failed.exists():
            pytest.fail(failed.read_text())
        if not done.exists():
            if not work.exists():
                copy_repo(work)
                write_two_edit_config(work)
            # targets first: --configfile takes every value that follows it
            result = snakemake(work, *DEMO_STAGES[stage], "--configfile", DEMO_CONFIG, "--cores", "2")
            if result.returncode != 0:
                logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
                failed.write_text(f"demo run ({stage}) failed:\n{result.stderr[-5000:]}\n{logs}")
                pytest.fail(failed.read_text())
            done.touch()
    return work


@pytest.fixture(scope="session")
def demo_tuned(tmp_path_factory):
    """The demo's first stage: the prepared and refusal-tuned model (see demo_run)."""
    return _demo_stage(tmp_path_factory, "tuned")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_tuned):
    """The whole demo DAG, run once per test session with two edits in a temporary copy of the
    repository (tests/demo_workflow.py). The workflow tests read and dry-run it; the SLURM test
    compares its own run against it and starts from its prepared and tuned model. Tests may add
    files (configs, a report) but leave its results and inputs as they found them."""
    return _demo_stage(tmp_path_factory, "all")


def pytest_collection_modifyitems(config, items):
    # with --no-loadscope-reorder, pytest-xdist hands out test modules in this order
    order = {name: rank for rank, name in enumerate(DEMO_MODULES)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))
