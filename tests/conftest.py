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


# The demo run and the SLURM tests form one chain (the SLURM test compares its run with the
# demo run and both SLURM tests share the one test cluster), the longest in the suite. Under
# pytest-xdist (pytest.ini runs `-n auto --dist loadgroup`) that chain is one work unit, given
# to the first worker before anything else, and every other test module is a unit of its own
# (so a module's expensive fixtures are built once), spread over the other workers.
DEMO_CHAIN = "demo-and-slurm"


def _in_demo_chain(item) -> bool:
    return "demo_run" in getattr(item, "fixturenames", ()) or item.path.name == "test_slurm.py"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    chain = [item for item in items if _in_demo_chain(item)]
    rest = [item for item in items if not _in_demo_chain(item)]
    for item in chain:
        item.add_marker(pytest.mark.xdist_group(DEMO_CHAIN))
    for item in rest:
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items[:] = chain + rest
