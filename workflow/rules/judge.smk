# Step 6, judging: each answer file judged by each configured judge, and the judges' agreement.


rule judge_strmatch:
    input:
        questions="results/questions/{promptset}.jsonl",
        answers="results/answers/{promptset}/{condition}.jsonl",
    output:
        judgments="results/judgments/strmatch/{promptset}/{condition}.csv",
    log:
        "logs/judge_strmatch/{promptset}/{condition}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/judge_strmatch.py"


rule fetch_official_evaluator:
    input:
        manifest="vendor/sorry-bench.sha256",
    output:
        evaluator=directory("vendor/sorry-bench"),
    log:
        "logs/fetch_official_evaluator.log",
    conda:
        "../envs/stats.yaml"
    params:
        evaluator=lookup(dpath="official_judge/evaluator", within=config, default=None),
    script:
        "../scripts/fetch_official_evaluator.py"


rule download_judge:
    output:
        judge_model=directory(
            "resources/models/ft-mistral-7b-instruct-v0.2-sorry-bench-202406"
        ),
    log:
        "logs/download_judge.log",
    benchmark:
        "benchmarks/download_judge.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        judge_model=lookup(
            dpath="official_judge/judge_model", within=config, default=None
        ),
    script:
        "../scripts/download_judge.py"


rule judge_official:
    input:
        questions="results/questions/{promptset}.jsonl",
        answers=expand(
            "results/answers/{{promptset}}/{condition}.jsonl", condition=CONDITIONS
        ),
        evaluator=ancient("vendor/sorry-bench"),
        manifest="vendor/sorry-bench.sha256",
        judge_model=ancient(
            "resources/models/ft-mistral-7b-instruct-v0.2-sorry-bench-202406"
        ),
    output:
        judgments=expand(
            "results/judgments/official/{{promptset}}/{condition}.csv",
            condition=CONDITIONS,
        ),
    log:
        "logs/judge_official/{promptset}.log",
    benchmark:
        "benchmarks/judge_official/{promptset}.tsv"
    conda:
        "../envs/judge.yaml"
    threads: 4
    resources:
        gpu=GPUS_PER_JOB,
    params:
        # answers and judgments in this order, one per condition
        conditions=CONDITIONS,
        bench_name=lookup(
            dpath="official_judge/bench_name", within=config, default=None
        ),
        judge_prompt=lookup(
            dpath="official_judge/judge_prompt", within=config, default=None
        ),
        judge_model=lookup(
            dpath="official_judge/judge_model", within=config, default=None
        ),
    script:
        "../scripts/judge_official.py"


rule judge_agreement:
    input:
        # each judge's tables by name; prefixed, as an input name must not shadow an
        # attribute of Snakemake's input list
        **{
            f"judgments_{judge}": expand(
                "results/judgments/{judge}/{{promptset}}/{condition}.csv",
                judge=judge,
                condition=CONDITIONS,
            )
            for judge in JUDGES
        },
    output:
        agreement="results/stats/judge_agreement/{promptset}.csv",
    log:
        "logs/judge_agreement/{promptset}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        judges=JUDGES,
    script:
        "../scripts/judge_agreement.py"
