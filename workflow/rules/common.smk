from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")


MODEL_NAME = config["model"]["name"]
PREPARED_MODEL = f"resources/models/{MODEL_NAME}"
TUNED_MODEL = f"resources/models/{MODEL_NAME}-refusal-tuned"
EDITS = list(config["edit"]["methods"])
CONDITIONS = ["baseline"] + [f"edited_{edit}" for edit in EDITS]
PROMPTSETS = ["benchmark"] + (["heldout"] if config["heldout_check"] else [])
JUDGES = list(config["judges"])
N_SHARDS = int(config["generation"]["shards"])
GPUS_PER_JOB = int(config["compute"]["gpus_per_job"])
# jobs that can run beside other jobs (activations, edit, answers, verify) take this many
# threads; prepare_model and refusal_tune, which nothing can run beside, take every core
THREADS_PER_JOB = config["compute"].get("threads_per_job") or workflow.cores


wildcard_constraints:
    condition=r"baseline|edited_[A-Za-z0-9_]+",
    edit=r"[A-Za-z0-9_]+",
    promptset=r"benchmark|heldout",
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
    return targets


def chat_template_file(wildcards):
    """The template file a model that ships none gets (config model.chat_template), if any."""
    return config["model"].get("chat_template") or []
