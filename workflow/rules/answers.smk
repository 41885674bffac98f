# Step 5, the answers: every prompt set as question records (benchmark, held-out, XSTest), and
# each condition's greedy answers to them, generated in shards and gathered.


rule benchmark_questions:
    input:
        local=ancient(local_benchmark()),
    output:
        questions="results/questions/benchmark.jsonl",
    log:
        "logs/benchmark_questions.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    params:
        benchmark=lookup(dpath="benchmark", within=config),
        source_sha256=local_file_sha256(local_benchmark()),
    script:
        "../scripts/benchmark_questions.py"


rule heldout_questions:
    input:
        split="results/split/prompt_split.csv",
    output:
        questions="results/questions/heldout.jsonl",
    log:
        "logs/heldout_questions.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/heldout_questions.py"


rule fetch_xstest:
    output:
        csv="resources/xstest/xstest_prompts.csv",
    log:
        "logs/fetch_xstest.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        url=lookup(dpath="cost/xstest/url", within=config, default=None),
        sha256=lookup(dpath="cost/xstest/sha256", within=config, default=None),
    script:
        "../scripts/fetch_xstest.py"


rule xstest_questions:
    input:
        csv=xstest_csv(),
    output:
        questions="results/questions/xstest.jsonl",
    log:
        "logs/xstest_questions.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        sha256=lookup(dpath="cost/xstest/sha256", within=config, default=None),
    script:
        "../scripts/xstest_questions.py"


# Answers come in generation.shards shards, one job each, gathered into one file per prompt set
# and condition. Snakemake's own `scattergather` was weighed against this hand-made wiring and
# not taken: it keeps the two guarantees that matter (the gather is byte-identical to an
# unsharded run because gather_answers writes in the question file's order; a lost shard reruns that
# shard alone, since each shard is its own file either way), but
# - it numbers items 1-of-N, so every finished shard-0-of-1 file of an existing results
#   directory would be missing and every answer job would rerun;
# - its `{scatteritem}` wildcard is the string "1-of-N", which a param function would have to
#   parse back into the shard index and count that generate_shard needs;
# - `--set-scatter` on the command line can change the count behind the config (and its
#   schema), so the count would live in two places.
# Here the file name carries the index and the count (0-based, as generate_shard takes them),
# the count comes from the config alone, and the wildcard constraints admit only this count.
rule generate_answers:
    input:
        questions="results/questions/{promptset}.jsonl",
        model=model_for_condition,
    output:
        answers="results/answers/{promptset}/{condition}/shard-{shard}-of-{nshards}.jsonl",
        lengths="results/answers/{promptset}/{condition}/shard-{shard}-of-{nshards}.lengths.csv",
    log:
        "logs/generate_answers/{promptset}/{condition}/shard-{shard}-of-{nshards}.log",
    benchmark:
        "benchmarks/generate_answers/{promptset}/{condition}/shard-{shard}-of-{nshards}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    params:
        generation=lookup(dpath="generation", within=config),
        device=lookup(dpath="compute/device", within=config),
    script:
        "../scripts/generate_answers.py"


rule gather_answers:
    input:
        questions="results/questions/{promptset}.jsonl",
        answers=answer_shards,
        lengths=answer_length_shards,
    output:
        answers="results/answers/{promptset}/{condition}.jsonl",
        lengths="results/answers/{promptset}/{condition}.lengths.csv",
    log:
        "logs/gather_answers/{promptset}/{condition}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/gather_answers.py"
