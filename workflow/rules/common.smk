import hashlib
import re
import shutil
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

# the library: the checks and expansions below use the very code the jobs use
sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))
from refusal_ablation.gpus import share_each_gpu
from refusal_ablation.variants import VariantError, edit_variants

try:
    EDIT_VARIANTS = edit_variants(config["edit"])
except VariantError as error:
    raise WorkflowError(f"config: {error}") from None


MODEL_NAME = config["model"]["name"]
PREPARED_MODEL = f"resources/models/{MODEL_NAME}"
TUNED_MODEL = f"resources/models/{MODEL_NAME}-refusal-tuned"
# every edit variant by name: reference, norm_aware_s050, ... (refusal_ablation.variants)
EDITS = list(EDIT_VARIANTS)
CONDITIONS = ["baseline"] + [f"edited_{edit}" for edit in EDITS]
PROMPTSETS = ["benchmark"] + (["heldout"] if config["heldout_check"] else [])
# the cost of the edit: KL on harmless prompt sets, over-refusal on XSTest (answered like the benchmark)
COST = bool(config.get("cost", {}).get("enabled", False))
KL_PROMPTSETS = list(config["cost"]["kl"]["promptsets"]) if COST else []
if COST:
    PROMPTSETS.append("xstest")
JUDGES = list(config["judges"])
N_SHARDS = int(config["generation"]["shards"])
GPUS_PER_JOB = int(config["compute"]["gpus_per_job"])
# how many GPU jobs may share one device: handed to the jobs in their environment, not as a
# param, because it changes scheduling, never a result (refusal_ablation.gpus)
share_each_gpu(config["compute"].get("jobs_per_gpu", 1))
# jobs that can run beside other jobs (activations, edit, answers, verify) take this many
# threads; prepare_model and refusal_tune, which nothing can run beside, take every core
THREADS_PER_JOB = config["compute"].get("threads_per_job") or workflow.cores
# Arditi-style selection of the single direction, when edit.selection leaves keys out
SELECTION_DEFAULTS = {
    "kl_threshold": 0.1,
    "max_layer_fraction": 0.8,
    "refusal_prefixes": [
        "I'm sorry",
        "I cannot",
        "I can't",
        "Sorry",
        "I apologize",
        "As an AI",
    ],
    "prompts_per_label_per_area": None,
}


def one_of(values):
    """A wildcard constraint that matches exactly these values (and nothing longer)."""
    return "|".join(re.escape(str(value)) for value in values)


# Each wildcard matches only what this config can ask for: no path can be read two ways
# (results/stats/judge_agreement/... is no judge's), and a stale name (an edit no longer
# configured, a shard of another count) names no job.
wildcard_constraints:
    condition=one_of(CONDITIONS),
    edit=one_of(EDITS),
    promptset=one_of(sorted(set(PROMPTSETS) | set(KL_PROMPTSETS))),
    judge=one_of(JUDGES),
    shard=one_of(range(N_SHARDS)),
    nshards=one_of([N_SHARDS]),


def refusal_tune_enabled():
    return bool(config.get("refusal_tune", {}).get("enabled", False))


def baseline_model():
    """The model every stage treats as 'baseline': the prepared one, or its refusal-tuned copy."""
    return TUNED_MODEL if refusal_tune_enabled() else PREPARED_MODEL


# What the directions file records as its model: the tuned copy when there is one.
BASELINE_MODEL_SPEC = dict(config["model"], name=baseline_model().split("/")[-1])


def model_for_condition(wildcards):
    if wildcards.condition == "baseline":
        return baseline_model()
    return f"results/models/{wildcards.condition}"


def edit_variant(wildcards):
    return EDIT_VARIANTS[wildcards.edit]


def edit_arditi_layer(wildcards):
    """Only arditi variants read edit.arditi_layer, so only they rerun when it changes."""
    if EDIT_VARIANTS[wildcards.edit]["method"] != "arditi":
        return None
    return config["edit"].get("arditi_layer")


def edit_restore_norms(wildcards):
    """Only norm_aware variants read edit.restore_norms (reference always, arditi never restores)."""
    if EDIT_VARIANTS[wildcards.edit]["method"] != "norm_aware":
        return None
    return config["edit"]["restore_norms"]


def arditi_selection_needed():
    """Arditi variants pick their layer by selection unless edit.arditi_layer fixes it."""
    has_arditi = any(v["method"] == "arditi" for v in EDIT_VARIANTS.values())
    return has_arditi and config["edit"].get("arditi_layer") is None


def edit_selection_input(wildcards):
    if (
        EDIT_VARIANTS[wildcards.edit]["method"] == "arditi"
        and arditi_selection_needed()
    ):
        return "results/directions/arditi_selection.json"
    return []


def construction_csv():
    if config["construction"]["source"] == "local":
        return config["construction"]["path"]
    return DOWNLOADED_CONSTRUCTION


# The download is named after its URL: a changed URL is a new file (fetched and checked by
# its own job before the split can start); the same URL is checked below before any job.
DOWNLOADED_CONSTRUCTION = "resources/construction/{}/construction_prompts.csv".format(
    hashlib.sha256(str(config["construction"].get("url")).encode()).hexdigest()[:12]
)


def local_benchmark():
    """The local benchmark file, or no input when it comes from the Hub."""
    if config["benchmark"]["source"] == "local":
        return config["benchmark"]["path"]
    return []


def local_file_sha256(path):
    """SHA-256 of a local input, passed as a param: a changed file (or path) reruns its job,
    while an edit that is undone does not (the inputs are ancient(), so mtime alone never
    reruns them)."""
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- checks before any job
# Every input that can be checked cheaply is checked here, when the workflow is parsed, with
# the library's own readers: a bad value fails `snakemake -n` naming the key, file and line,
# and no job starts (so Snakemake deletes no finished output). To check a new input, add one
# entry to input_checks().


def input_checks():
    """(config key, path, check) for every local input that exists or must exist now."""
    from refusal_ablation.benchmark import read_benchmark_file
    from refusal_ablation.io import verify_sha256
    from refusal_ablation.split import policy_area_split, read_construction_csv
    from refusal_ablation.xstest import read_xstest

    spec = config["construction"]

    def construction(path):
        frame = read_construction_csv(path, spec["prompts_per_label_per_area"])
        policy_area_split(frame, spec["construction_areas"], config["seed"])

    def sha256(path):
        verify_sha256(path, spec["sha256"])

    checks = []
    if spec["source"] == "local" or Path(DOWNLOADED_CONSTRUCTION).exists():
        path = construction_csv()
        key = "construction.path" if spec["source"] == "local" else "construction.url"
        if spec.get("sha256"):
            checks.append(("construction.sha256", path, sha256))
        checks.append((key, path, construction))
    if config["benchmark"]["source"] == "local":
        style = config["benchmark"]["prompt_style"]
        checks.append(
            (
                "benchmark.path",
                config["benchmark"]["path"],
                lambda path: read_benchmark_file(path, style),
            )
        )
    xstest = config.get("cost", {}).get("xstest", {})
    if COST and (xstest.get("source") == "local" or Path(xstest_csv()).exists()):
        key = (
            "cost.xstest.path" if xstest.get("source") == "local" else "cost.xstest.url"
        )
        checks.append(
            (key, xstest_csv(), lambda path: read_xstest(path, xstest.get("sha256")))
        )
    return checks


def check_inputs_before_any_job():
    from refusal_ablation.io import InputError

    problems, failed = [], set()
    for key, path, check in input_checks():
        if path in failed:
            continue  # a later check of the same file would only repeat the problem
        if not Path(path).is_file():
            problems.append(f"config {key}: {path} does not exist")
            failed.add(path)
            continue
        try:
            check(path)
        except InputError as exc:
            problems.append(f"config {key}: {exc}")
            failed.add(path)
    if problems:
        raise WorkflowError(
            "bad input, nothing was run or deleted; fix it and rerun:\n  "
            + "\n  ".join(problems)
        )


onerror:
    # answers that a failed run never finished would otherwise keep a temporary edited
    # checkpoint (gigabytes) under results/models/; the next run rebuilds it
    if not config["edit"]["keep_checkpoint"]:
        for edit in EDITS:
            checkpoint = Path(f"results/models/edited_{edit}")
            if checkpoint.is_dir():
                shutil.rmtree(checkpoint)
                print(
                    f"removed the temporary edited checkpoint {checkpoint}",
                    file=sys.stderr,
                )


def xstest_csv():
    xstest = config.get("cost", {}).get("xstest", {})
    if xstest.get("source") == "local":
        return xstest["path"]
    return "resources/xstest/xstest_prompts.csv"


def kl_tables_by_edit(wildcards):
    # keys prefixed: an edit's name alone could shadow an attribute of Snakemake's input list
    return {
        f"kl_{edit}": expand(
            f"results/cost/{edit}/kl_{{promptset}}.csv", promptset=KL_PROMPTSETS
        )
        for edit in EDITS
    }


def tradeoff_inputs(wildcards):
    inputs = {
        f"paired_{edit}": f"results/stats/{wildcards.judge}/{edit}/paired.csv"
        for edit in EDITS
    }
    inputs.update(
        {f"kl_summary_{edit}": f"results/cost/{edit}/kl_summary.csv" for edit in EDITS}
    )
    inputs["xstest"] = f"results/stats/{wildcards.judge}/comparisons/xstest.csv"
    return inputs


def cost_summary_inputs(wildcards):
    """What the summary of one edit and judge says about the cost (nothing without cost)."""
    if not COST:
        return {}
    return {
        "kl_summary": f"results/cost/{wildcards.edit}/kl_summary.csv",
        # this edit's XSTest judgments, not the all-pairs table: a new variant reruns no other summary
        "xstest_questions": "results/questions/xstest.jsonl",
        "xstest_baseline": f"results/judgments/{wildcards.judge}/xstest/baseline.csv",
        "xstest_edited": f"results/judgments/{wildcards.judge}/xstest/edited_{wildcards.edit}.csv",
    }


def cost_targets():
    if not COST:
        return []
    targets = [f"results/figures/cost/{edit}/kl_ecdf.png" for edit in EDITS]
    for judge in JUDGES:
        targets += [
            f"results/stats/{judge}/xstest/refusal.csv",
            f"results/stats/{judge}/tradeoff.csv",
            f"results/figures/{judge}/tradeoff.png",
        ]
        if len(EDITS) > 1:
            targets.append(f"results/stats/{judge}/comparisons/benchmark.csv")
    if len(EDITS) > 1:
        targets.append("results/cost/kl_comparisons.csv")
    return targets


def answer_shards(wildcards):
    return expand(
        "results/answers/{promptset}/{condition}/shard-{shard}-of-{nshards}.jsonl",
        promptset=wildcards.promptset,
        condition=wildcards.condition,
        shard=range(N_SHARDS),
        nshards=N_SHARDS,
    )


def answer_length_shards(wildcards):
    return [path.replace(".jsonl", ".lengths.csv") for path in answer_shards(wildcards)]


def final_targets():
    targets = [
        "results/directions/refusal_directions.npz",
        "results/figures/directions/direction_stability.png",
        "results/figures/directions/layer_separation.png",
    ]
    if arditi_selection_needed():
        targets.append("results/figures/directions/arditi_selection.png")
    for edit in EDITS:
        targets.append(f"results/verify/{edit}/residual_projection.png")
    for judge in JUDGES:
        for edit in EDITS:
            targets.append(f"results/stats/{judge}/{edit}/summary.md")
            targets.append(f"results/figures/{judge}/{edit}/overall_compliance.png")
            if config["heldout_check"]:
                targets.append(f"results/stats/{judge}/{edit}/heldout.csv")
    if len(EDITS) > 1:
        targets += [f"results/figures/{judge}/dose_response.png" for judge in JUDGES]
    if len(JUDGES) > 1:
        targets += [f"results/stats/judge_agreement/{p}.csv" for p in PROMPTSETS]
    return targets + cost_targets()


def chat_template_file(wildcards):
    """The template file a model that ships none gets (config model.chat_template), if any."""
    return config["model"].get("chat_template") or []


# jobs that Snakemake runs in their own process (cluster, SLURM) parse this file again
if workflow.is_main_process:
    check_inputs_before_any_job()
