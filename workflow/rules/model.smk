rule prepare_model:
    input:
        chat_template=chat_template_file,
    output:
        model=directory(PREPARED_MODEL),
    log:
        "logs/prepare_model.log",
    benchmark:
        "benchmarks/prepare_model.tsv"
    conda:
        "../envs/torch.yaml"
    threads: workflow.cores
    params:
        spec=lookup(dpath="model", within=config),
    script:
        "../scripts/prepare_model.py"


rule refusal_tune:
    input:
        model=PREPARED_MODEL,
        split="results/split/prompt_split.csv",
        benchmark="results/questions/benchmark.jsonl",
    output:
        model=directory(TUNED_MODEL),
        losses="results/refusal_tune/loss_curve.csv",
    log:
        "logs/refusal_tune.log",
    benchmark:
        "benchmarks/refusal_tune.tsv"
    conda:
        "../envs/torch.yaml"
    threads: workflow.cores
    resources:
        gpu=GPUS_PER_JOB,
    params:
        tune=lookup(dpath="refusal_tune", within=config, default={}),
        seed=lookup(dpath="seed", within=config),
        device=lookup(dpath="compute/device", within=config),
    script:
        "../scripts/refusal_tune.py"


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


rule edit_model:
    input:
        model=baseline_model(),
        directions="results/directions/refusal_directions.npz",
        selection=edit_selection_input,
    output:
        model=(
            directory("results/models/edited_{edit}")
            if config["edit"]["keep_checkpoint"]
            else temp(directory("results/models/edited_{edit}"))
        ),
    log:
        "logs/edit_model/{edit}.log",
    benchmark:
        "benchmarks/edit_model/{edit}.tsv"
    # on the critical path: start it before side jobs such as figures
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    params:
        variant=edit_variant,
        restore_norms=edit_restore_norms,
        arditi_layer=edit_arditi_layer,
    script:
        "../scripts/edit_model.py"


rule verify_edit:
    input:
        baseline_model=baseline_model(),
        edited_model="results/models/edited_{edit}",
        directions="results/directions/refusal_directions.npz",
        split="results/split/prompt_split.csv",
    output:
        csv=report(
            "results/verify/{edit}/residual_projection.csv",
            caption="../report/verify_edit.rst",
            category="Edit verification",
            subcategory="{edit} edit",
            labels={"result": "Table: component along d, before and after"},
        ),
        png=report(
            "results/verify/{edit}/residual_projection.png",
            caption="../report/verify_edit.rst",
            category="Edit verification",
            subcategory="{edit} edit",
            labels={"result": "Figure: component along d, before and after"},
        ),
    log:
        "logs/verify_edit/{edit}.log",
    benchmark:
        "benchmarks/verify_edit/{edit}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    params:
        batch_size=lookup(dpath="activations/batch_size", within=config),
        device=lookup(dpath="compute/device", within=config),
        prompts_per_label_per_area=lookup(
            dpath="edit/verify_prompts_per_label_per_area", within=config, default=None
        ),
    script:
        "../scripts/verify_edit.py"
