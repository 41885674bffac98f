from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


MODEL_NAME = config["model"]["name"]
PREPARED_MODEL = f"resources/models/{MODEL_NAME}"
TUNED_MODEL = f"resources/models/{MODEL_NAME}-refusal-tuned"
EDITS = list(config["edit"]["methods"])
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
# jobs that can run beside other jobs (activations, edit, answers, verify) take this many
# threads; prepare_model and refusal_tune, which nothing can run beside, take every core
THREADS_PER_JOB = config["compute"].get("threads_per_job") or workflow.cores


wildcard_constraints:
    condition=r"baseline|edited_[A-Za-z0-9_]+",
    edit=r"[A-Za-z0-9_]+",
    promptset=r"benchmark|heldout|xstest",
    judge=r"[A-Za-z0-9_]+",
    shard=r"\d+",
    nshards=r"\d+",


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


def construction_csv():
    if config["construction"]["source"] == "local":
        return config["construction"]["path"]
    return "resources/construction/construction_prompts.csv"


def xstest_csv():
    if config["cost"]["xstest"]["source"] == "local":
        return config["cost"]["xstest"]["path"]
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
        "xstest_comparisons": f"results/stats/{wildcards.judge}/comparisons/xstest.csv",
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
    for edit in EDITS:
        targets.append(f"results/verify/{edit}/residual_projection.png")
    for judge in JUDGES:
        for edit in EDITS:
            targets.append(f"results/stats/{judge}/{edit}/summary.md")
            targets.append(f"results/figures/{judge}/{edit}/overall_compliance.png")
            if config["heldout_check"]:
                targets.append(f"results/stats/{judge}/{edit}/heldout.csv")
    if len(JUDGES) > 1:
        targets += [f"results/stats/judge_agreement/{p}.csv" for p in PROMPTSETS]
    return targets + cost_targets()
