# Step 2, the construction data: the prompts (local or fetched), their split into construction
# and held-out areas, and the baseline model's activations on them.


rule fetch_construction:
    output:
        csv=DOWNLOADED_CONSTRUCTION,
    log:
        "logs/fetch_construction.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        url=lookup(dpath="construction/url", within=config, default=None),
        sha256=lookup(dpath="construction/sha256", within=config, default=None),
    script:
        "../scripts/fetch_construction.py"


rule split:
    input:
        csv=ancient(construction_csv()),
    output:
        split="results/split/prompt_split.csv",
    log:
        "logs/split.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        seed=lookup(dpath="seed", within=config),
        construction_areas=lookup(
            dpath="construction/construction_areas", within=config
        ),
        prompts_per_label_per_area=lookup(
            dpath="construction/prompts_per_label_per_area", within=config
        ),
        sha256=lookup(dpath="construction/sha256", within=config, default=None),
        source_sha256=local_file_sha256(
            config["construction"].get("source") == "local" and construction_csv()
        ),
    script:
        "../scripts/split.py"


rule activations:
    input:
        split="results/split/prompt_split.csv",
        model=baseline_model(),
    output:
        activations="results/activations/construction.npz",
    log:
        "logs/activations.log",
    benchmark:
        "benchmarks/activations.tsv"
    # activations -> directions -> edit is the critical path: first call on a free core
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    params:
        batch_size=lookup(dpath="activations/batch_size", within=config),
        device=lookup(dpath="compute/device", within=config),
    script:
        "../scripts/activations.py"
