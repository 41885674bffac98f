# Step 1, the model: the configured checkpoint prepared, then (refusal_tune) its refusal-tuned
# copy where the config asks for one. What every later stage calls the baseline model.


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
