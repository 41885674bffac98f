# Step 4, the edit: one edited checkpoint per edit variant, and its check that the edited layers
# no longer write along the direction.


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
