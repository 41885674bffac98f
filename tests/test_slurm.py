"""profiles/slurm against a real SLURM cluster: jobs go through sbatch, GPU rules get a GPU.

Needs a running cluster (CI starts a single-node one with .ci/slurm_setup.sh, whose node
offers two fake GPUs); skipped where `sinfo` does not answer. Snakemake runs with the
profile as users run it, plus the few overrides in CI_OVERRIDES, each explained there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from demo_workflow import DEMO_CONFIG, copy_repo

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "profiles" / "slurm"
INIT_SECONDS_BEFORE_STATUS_CHECKS = 5

CI_OVERRIDES = [
    # conda channels cannot be reached in CI; --sdm takes at least one method, and
    # env-modules does nothing for rules without `envmodules:` (none have it)
    "--sdm",
    "env-modules",
    # the test cluster has no slurmdbd: sacct fails there, and the plugin would wait forever
    "--slurm-status-command",
    "squeue",
    # squeue sees a finished job for MinJobAge (300 s) >= 3x this
    "--slurm-init-seconds-before-status-checks",
    str(INIT_SECONDS_BEFORE_STATUS_CHECKS),
    # no accounting, so no accounts to guess
    "--slurm-no-account",
    # evidence: one kept SLURM log per job, and each sbatch call in the output
    "--slurm-keep-successful-logs",
    "--verbose",
]

pytestmark = pytest.mark.slurm

SBATCH_CALL = re.compile(r"sbatch call: (sbatch .*)")
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _run(command: list[str], timeout: int = 10) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster() -> dict:
    """The running cluster's node states and MinJobAge; skips the module without one."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("no SLURM client here (CI starts one with .ci/slurm_setup.sh)")
    try:
        nodes = _run(["sinfo", "-h", "-N", "-o", "%N %T %c %m %G"])
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo does not answer")
    if nodes.returncode != 0 or not nodes.stdout.strip():
        pytest.skip(f"no SLURM controller answers sinfo: {nodes.stderr.strip()}")
    usable = [line.split() for line in nodes.stdout.splitlines() if line.split()[1] in ("idle", "mixed", "allocated")]
    assert usable, f"no usable SLURM node:\n{nodes.stdout}"
    config = _run(["scontrol", "show", "config"]).stdout
    min_job_age = int(re.search(r"MinJobAge\s*=\s*(\d+)", config).group(1))
    # squeue forgets finished jobs after MinJobAge: shorter and the plugin misses them
    assert min_job_age >= 3 * INIT_SECONDS_BEFORE_STATUS_CHECKS, min_job_age
    return {
        "nodes": [
            {"name": name, "cpus": int(cpus), "mem_mb": int(mem), "gres": gres} for name, _, cpus, mem, gres in usable
        ],
        "gpus": sum(int(count) for *_, gres in usable for count in re.findall(r"gpu:(?:\w+:)?(\d+)", gres)),
        "min_job_age": min_job_age,
    }


def profile_settings() -> dict:
    """profiles/slurm as Snakemake reads it (a YTE template)."""
    import yte

    with open(SLURM_PROFILE / "config.yaml", encoding="utf-8") as fh:
        return yte.process_yaml(fh, require_use_yte=True)


def rule_resources(rule: str) -> dict:
    settings = profile_settings()
    return {**settings["default-resources"], **settings["set-resources"].get(rule, {})}


def run_snakemake(workdir: Path, args: list[str], timeout_s: int, log_name: str):
    """Run Snakemake under `timeout -k`, so a hung status loop cannot hang the test."""
    log_path = workdir / log_name
    command = ["timeout", "-k", "30", str(timeout_s), sys.executable, "-m", "snakemake", *args]
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    return done.returncode, log_path.read_text(encoding="utf-8")


def failure_report(workdir: Path, output: str) -> str:
    kept = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    logs = "\n".join(f"--- {path}\n{path.read_text()[-3000:]}" for path in kept[-5:])
    return f"snakemake output (tail):\n{output[-6000:]}\nSLURM logs:\n{logs}"


def sbatch_calls(output: str) -> list[dict]:
    """Each sbatch call the plugin made: rule, GPUs, CPUs, memory, time limit."""
    calls = []
    for match in SBATCH_CALL.finditer(output):
        call = match.group(1).split(" --wrap=")[0]
        comment = re.search(r"--comment (\S+)", call).group(1)
        gpus = re.search(r"--gpus=(\S+)", call)
        calls.append(
            {
                "rule": re.match(r"rule_(\w+?)(?:_wildcards_|$)", comment).group(1),
                "comment": comment,
                "gpus": gpus.group(1) if gpus else None,
                "cpus_per_task": int(re.search(r"--cpus-per-task=(\d+)", call).group(1)),
                "mem_mb": int(re.search(r"--mem (\d+)", call).group(1)),
                "runtime": int(re.search(r" -t (\d+)", call).group(1)),
            }
        )
    return calls


def assert_submitted_as_profiled(calls: list[dict]) -> None:
    """Every sbatch call asks for exactly what the profile sets for its rule."""
    for call in calls:
        expected = rule_resources(call["rule"])
        assert call["cpus_per_task"] == expected["cpus_per_task"], call
        assert call["mem_mb"] == expected["mem_mb"], call
        assert call["runtime"] == expected["runtime"], call
        expected_gpus = expected.get("gpu", 0)
        assert call["gpus"] == (str(expected_gpus) if expected_gpus else None), call


def assert_every_job_ran_under_slurm(output: str, workdir: Path, n_jobs: int) -> None:
    submitted = SUBMITTED.findall(output)
    assert len(submitted) == n_jobs, output[-4000:]
    for slurm_job_id, log_pattern in submitted:
        log = Path(log_pattern.replace("%j", slurm_job_id))
        assert log.is_file(), f"no SLURM log {log} for job {slurm_job_id}"
        assert log.resolve().is_relative_to(workdir.resolve())
        text = log.read_text(encoding="utf-8")
        assert "--executor slurm-jobstep" in text or "Finished jobid" in text, text[-2000:]


TRIVIAL_WORKFLOW = """\
import json, os, sys, time

sys.path.insert(0, {scripts!r})
from refusal_ablation.gpus import allocate_gpus


localrules:
    gather_answers,


rule all:
    input:
        "gathered.json",


# named like the workflow's GPU rule, so the profile's set-resources apply to it
rule generate_answers:
    output:
        "shard-{{shard}}.json",
    resources:
        gpu=0,
    run:
        started = time.time()
        given = os.environ.get("CUDA_VISIBLE_DEVICES")
        with allocate_gpus(resources.gpu) as devices:
            seen = os.environ.get("CUDA_VISIBLE_DEVICES")
            time.sleep(3)
        record = dict(
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            given=given,
            devices=devices,
            seen=seen,
            gpu=resources.gpu,
            started=started,
            ended=time.time(),
        )
        with open(output[0], "w") as fh:
            json.dump(record, fh)


rule fit_directions:
    output:
        "cpu.json",
    run:
        with open(output[0], "w") as fh:
            json.dump(
                dict(
                    slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                    given=os.environ.get("CUDA_VISIBLE_DEVICES"),
                ),
                fh,
            )


rule gather_answers:
    input:
        shards=expand("shard-{{shard}}.json", shard=range({shards})),
        cpu="cpu.json",
    output:
        "gathered.json",
    run:
        records = [json.load(open(path)) for path in [*input.shards, input.cpu]]
        records.append(dict(gather_slurm_job_id=os.environ.get("SLURM_JOB_ID")))
        with open(output[0], "w") as fh:
            json.dump(records, fh)
"""


def test_gpu_and_cpu_jobs_go_through_sbatch_with_the_profile(tmp_path, slurm_cluster):
    # one GPU job more than the cluster has GPUs: SLURM must hold one back
    shards = slurm_cluster["gpus"] + 1
    (tmp_path / "Snakefile").write_text(
        TRIVIAL_WORKFLOW.format(scripts=str(REPO / "workflow" / "scripts"), shards=shards)
    )
    args = ["--workflow-profile", str(SLURM_PROFILE), *CI_OVERRIDES]
    rc, output = run_snakemake(tmp_path, args, timeout_s=600, log_name="snakemake.log")
    assert rc == 0, failure_report(tmp_path, output)

    calls = sbatch_calls(output)
    assert sorted(call["rule"] for call in calls) == ["fit_directions"] + ["generate_answers"] * shards
    assert_submitted_as_profiled(calls)
    assert_every_job_ran_under_slurm(output, tmp_path, n_jobs=shards + 1)

    *shard_records, cpu, local = json.loads((tmp_path / "gathered.json").read_text())
    submitted_ids = {job_id for job_id, _ in SUBMITTED.findall(output)}
    for shard in shard_records:
        assert shard["slurm_job_id"] in submitted_ids
        assert shard["gpu"] == rule_resources("generate_answers")["gpu"] == 1
        # SLURM picked the device; the allocator used it as given
        assert shard["given"] and shard["devices"] == shard["given"].split(",")
        assert shard["seen"] == shard["given"]
    if len(slurm_cluster["nodes"]) == 1:
        # the node's CPUs and memory would run every GPU job at once; only the GPUs may keep
        # them apart: never more GPU jobs at a time than GPUs, each on a device of its own
        gpu_job, node = rule_resources("generate_answers"), slurm_cluster["nodes"][0]
        assert shards * gpu_job["cpus_per_task"] <= node["cpus"] and shards * gpu_job["mem_mb"] <= node["mem_mb"]
        for shard in shard_records:
            running = [other for other in shard_records if other["started"] <= shard["started"] < other["ended"]]
            assert len(running) <= slurm_cluster["gpus"], running
            assert len({other["given"] for other in running}) == len(running), running
    assert cpu["slurm_job_id"] in submitted_ids and cpu["given"] is None
    assert local["gather_slurm_job_id"] is None


# ------------------------------------------------------------------ the demo DAG

# the SLURM run splits generation into shards (one sbatch job each); gathered answers
# must still equal the unsharded local run's (the session's demo run, conftest.py)
SLURM_SHARDS = 2
# What the SLURM run takes from the local run instead of computing it again: the prepared
# and the refusal-tuned model, with the split and the benchmark questions the tune read (so
# that no input is newer than the tuned model). Every later job (activations, directions,
# edits, answers, judgments, statistics) runs under SLURM and is compared with the local run.
# These are the outputs of the demo's first stage (DEMO_STAGES["tuned"] in conftest.py).
SHARED_WITH_THE_LOCAL_RUN = [
    "resources/models",
    "results/split",
    "results/questions/benchmark.jsonl",
    "results/refusal_tune",
]


def share_tuned_model(local_run: Path, work: Path) -> None:
    """Copy the local run's model preparation into ``work``, keeping modification times."""
    for relative in SHARED_WITH_THE_LOCAL_RUN:
        source, target = local_run / relative, work / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)


def compared_results(root: Path) -> dict[str, bytes]:
    """Gathered answers and their lengths, judgments and statistics tables, by path."""
    patterns = [
        "results/answers/*/*.jsonl",
        "results/answers/*/*.lengths.csv",
        "results/judgments/*/*/*.csv",
        "results/stats/*/*/*.csv",
    ]
    return {
        str(path.relative_to(root)): path.read_bytes() for pattern in patterns for path in sorted(root.glob(pattern))
    }


@pytest.mark.slow
def test_demo_dag_on_slurm_equals_the_local_run(tmp_path_factory, request, slurm_cluster, demo_tuned):
    # starts from the local run's first stage; its second stage may run meanwhile
    work = copy_repo(tmp_path_factory.mktemp("slurm-demo"))
    share_tuned_model(demo_tuned, work)
    demo = yaml.safe_load((demo_tuned / DEMO_CONFIG).read_text())
    demo["generation"]["shards"] = SLURM_SHARDS
    sharded_config = work / "config" / "demo_sharded.yaml"
    sharded_config.write_text(yaml.safe_dump(demo, sort_keys=False))

    args = [
        "--workflow-profile",
        str(work / "profiles" / "slurm"),
        "--configfile",
        str(sharded_config.relative_to(work)),
        *CI_OVERRIDES,
    ]
    rc, output = run_snakemake(work, args, timeout_s=3000, log_name="snakemake.log")
    assert rc == 0, failure_report(work, output)

    calls = sbatch_calls(output)
    submitted_rules = {call["rule"] for call in calls}
    local_rules = set(re.findall(r"^localrule (\w+):", output, flags=re.MULTILINE))
    assert {"activations", "fit_directions", "edit_model", "generate_answers"} <= submitted_rules
    # the shared model was taken as it is, not prepared or tuned again
    assert not {"prepare_model", "refusal_tune"} & (submitted_rules | local_rules), submitted_rules
    assert not submitted_rules & local_rules
    assert_submitted_as_profiled(calls)
    assert_every_job_ran_under_slurm(output, work, n_jobs=len(calls))

    from refusal_ablation.variants import edit_variants

    conditions = 1 + len(edit_variants(demo["edit"]))
    # every condition answers the benchmark, the held-out prompts (heldout_check) and XSTest (cost);
    # without heldout_check the baseline alone answers them when KL is measured along its answers
    cost = demo.get("cost", {})
    promptsets = 1 + bool(demo["heldout_check"]) + bool(cost.get("enabled"))
    kl_only = not demo["heldout_check"] and cost.get("enabled") and "heldout" in cost["kl"]["promptsets"]
    shard_jobs = [call for call in calls if call["rule"] == "generate_answers"]
    assert len(shard_jobs) == (conditions * promptsets + bool(kl_only)) * SLURM_SHARDS
    assert len({call["comment"] for call in shard_jobs}) == len(shard_jobs)

    demo_run = request.getfixturevalue("demo_run")
    expected = compared_results(demo_run)
    assert any("judgments" in path for path in expected) and any("stats" in path for path in expected)
    got = compared_results(work)
    assert sorted(got) == sorted(expected)
    differing = [path for path in expected if got[path] != expected[path]]
    assert not differing, f"SLURM results differ from the local run's: {differing}"

    # A failed or lost shard costs only itself: with the shard and the gathered file gone,
    # rebuilding the gathered answers plans one generate_answers job, for that shard.
    lost = work / "results/answers/benchmark/baseline" / f"shard-1-of-{SLURM_SHARDS}.jsonl"
    gathered = work / "results/answers/benchmark/baseline.jsonl"
    lost.unlink()
    gathered.unlink()
    dry = subprocess.run(
        # the target goes first: --configfile takes every value that follows it
        [
            sys.executable,
            "-m",
            "snakemake",
            str(gathered.relative_to(work)),
            "-n",
            "--cores",
            "2",
            "--configfile",
            str(sharded_config.relative_to(work)),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = re.findall(r"^rule generate_answers:.*?output: ([^\s,]+)", dry.stdout, flags=re.MULTILINE | re.DOTALL)
    assert planned == [str(lost.relative_to(work))], planned
