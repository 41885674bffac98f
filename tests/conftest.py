import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "tests"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole demo DAG, run once per test session with two edits in a temporary copy of the
    repository (tests/demo_workflow.py). The workflow tests read and dry-run it; the SLURM test
    compares its own run against it and starts from its prepared and tuned model. Tests may add
    files (configs, a report) but leave its results and inputs as they found them."""
    from demo_workflow import DEMO_CONFIG, copy_repo, snakemake, write_two_edit_config

    work = copy_repo(tmp_path_factory.mktemp("demo") / "repo")
    write_two_edit_config(work)
    result = snakemake(work, "--configfile", DEMO_CONFIG, "--cores", "2")
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"demo run failed:\n{result.stderr[-5000:]}\n{logs}")
    return work
