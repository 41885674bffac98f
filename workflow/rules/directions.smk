# Step 3, the refusal directions: one per layer fitted on the activations, and the Arditi-style
# choice of a single direction for the arditi edit variants.


rule fit_directions:
    input:
        activations="results/activations/construction.npz",
        split="results/split/prompt_split.csv",
    output:
        directions="results/directions/refusal_directions.npz",
        fit_report=report(
            "results/directions/direction_fit_report.csv",
            caption="../report/table_direction_fit.rst",
            category="Refusal direction",
            labels={"result": "Table: fit diagnostics per layer"},
        ),
        generalization=report(
            "results/directions/category_generalization_table.csv",
            caption="../report/table_generalization.rst",
            category="Refusal direction",
            labels={"result": "Table: direction stability"},
        ),
    log:
        "logs/fit_directions.log",
    priority: 10
    conda:
        "../envs/stats.yaml"
    params:
        seed=lookup(dpath="seed", within=config),
        generalization=lookup(dpath="directions/generalization", within=config),
        model=BASELINE_MODEL_SPEC,
    script:
        "../scripts/fit_directions.py"


rule select_arditi_direction:
    input:
        model=baseline_model(),
        directions="results/directions/refusal_directions.npz",
        split="results/split/prompt_split.csv",
    output:
        table=report(
            "results/directions/arditi_selection.csv",
            caption="../report/arditi_selection.rst",
            category="Refusal direction",
            labels={"result": "Table: single-direction selection"},
        ),
        record="results/directions/arditi_selection.json",
    log:
        "logs/select_arditi_direction.log",
    benchmark:
        "benchmarks/select_arditi_direction.tsv"
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    params:
        selection=lookup(
            dpath="edit/selection", within=config, default=SELECTION_DEFAULTS
        ),
        batch_size=lookup(dpath="activations/batch_size", within=config),
        device=lookup(dpath="compute/device", within=config),
    script:
        "../scripts/select_direction.py"
