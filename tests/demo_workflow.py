"""The demo workflow as the tests run it: a copy of the repository, Snakemake in a subprocess,
and the two-edit demo config that the shared demo run (conftest.py, fixture `demo_run`) uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# The demo run uses two edit variants (config/demo.yaml's full reference edit plus a one-point
# sweep at half strength) and measures KL on XSTest's safe prompts too, so that one run also
# covers the edit-against-edit comparisons, the dose-response and every harmless prompt set.
DEMO_CONFIG = "config/demo_two_edits.yaml"
DEMO_EDITS = ["reference", "reference_s050"]
DEMO_SWEEP = {"method": ["reference"], "scale": [0.5]}


def repo_files() -> list[str]:
    """The repository's files as git sees them (tracked and new), without ignored ones such
    as .venv, results or .snakemake."""
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


def write_two_edit_config(work: Path) -> Path:
    config = yaml.safe_load((work / "config/demo.yaml").read_text())
    config["edit"]["methods"] = ["reference"]
    config["edit"]["sweep"] = DEMO_SWEEP
    config["cost"]["kl"]["promptsets"] = ["heldout", "xstest"]
    path = work / DEMO_CONFIG
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
