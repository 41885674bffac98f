"""Time the whole CPU demo from scratch: wall clock, and each job's own time.

Copies the repository's tracked files into a fresh directory (no results, no converted model),
runs ``snakemake --configfile config/demo.yaml --cores N`` there and prints the wall time
next to each job's seconds from Snakemake's ``benchmark:`` files, then the demo's headline
refusal counts. The README's demo time comes from this script.

    .venv/bin/python tools/bench_demo.py            # all cores
    .venv/bin/python tools/bench_demo.py --cores 2
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tracked_copy(target: Path) -> None:
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / name)


def job_seconds(root: Path) -> list[tuple[str, float]]:
    rows = []
    for tsv in sorted((root / "benchmarks").rglob("*.tsv")):
        with tsv.open() as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        rows.append((str(tsv.relative_to(root / "benchmarks").with_suffix("")), float(record["s"])))
    return rows


def refusal_counts(root: Path) -> list[str]:
    lines = []
    overall = root / "results/stats/strmatch/reference/overall.csv"
    heldout = root / "results/stats/strmatch/reference/heldout.csv"
    if overall.is_file():
        for row in csv.DictReader(overall.open()):
            if row["estimate"] == "refusal_rate":
                lines.append(f"demo benchmark, {row['condition']}: {row['count']}/{row['n']} refused")
    if heldout.is_file():
        for row in csv.DictReader(heldout.open()):
            if row["estimate"] == "refusal_rate":
                lines.append(f"held-out {row['label']}, {row['condition']}: {row['count']}/{row['n']} refused")
    xstest = root / "results/stats/strmatch/xstest/refusal.csv"
    if xstest.is_file():
        for row in csv.DictReader(xstest.open()):
            lines.append(f"XSTest stand-in {row['label']}, {row['condition']}: {row['refusals']}/{row['n']} refused")
    kl = root / "results/cost/reference/kl_summary.csv"
    if kl.is_file():
        for row in csv.DictReader(kl.open()):
            if row["category"] == "all" and row["measure"] in ("kl_first", "kl_answer_mean"):
                lines.append(
                    f"KL {row['measure']} on {row['n_prompts']} {row['promptset']} safe prompts: mean "
                    f"{float(row['mean']):.3g} nats ({float(row['mean_ci_low']):.3g} to "
                    f"{float(row['mean_ci_high']):.3g}), median {float(row['median']):.3g}"
                )
    dose = root / "results/stats/strmatch/dose_response.csv"
    if dose.is_file():
        for row in csv.DictReader(dose.open()):
            kl = row.get("kl_answer_mean_heldout")
            lines.append(
                f"variant {row['edit']} (scale {row['scale']}): benchmark refusal {float(row['refusal_rate']):.3f} "
                f"(change {float(row['change_vs_baseline']):+.3f}, "
                f"McNemar p {float(row['mcnemar_p_vs_baseline']):.2g}), "
                f"layer-write leakage {float(row['layer_writes_ratio_median']):.3g}"
                + (f", mean answer KL held-out {float(kl):.3g}" if kl else "")
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args()
    snakemake = Path(sys.executable).with_name("snakemake")
    root = Path(tempfile.mkdtemp(prefix="demo-bench-"))
    try:
        tracked_copy(root)
        print(f"running the demo in {root} on {args.cores} cores ({os.cpu_count()} on this machine)", flush=True)
        start = time.monotonic()
        with (root / "snakemake.log").open("w") as log:
            run = subprocess.run(
                [str(snakemake), "--configfile", "config/demo.yaml", "--cores", str(args.cores)],
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wall = time.monotonic() - start
        if run.returncode != 0:
            args.keep = True
            print(
                f"the demo failed (exit {run.returncode}) after {wall:.0f} s; see {root}/snakemake.log and {root}/logs"
            )
            return 1
        jobs = job_seconds(root)
        print(f"\nwall clock: {wall:.0f} s ({wall / 60:.1f} min)")
        print(f"{'job':60s} {'seconds':>8s}")
        for name, seconds in jobs:
            print(f"{name:60s} {seconds:8.1f}")
        print(f"{'sum of the timed jobs (they overlap)':60s} {sum(s for _, s in jobs):8.1f}\n")
        print("\n".join(refusal_counts(root)))
        return 0
    finally:
        if args.keep:
            print(f"run directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
