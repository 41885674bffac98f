# Step 7, the cost of the edit: KL on harmless prompts, over-refusal on XSTest, every pair of
# conditions compared, and the trade-off of refusal removed against behaviour moved.


rule kl_divergence:
    input:
        questions="results/questions/{promptset}.jsonl",
        answers="results/answers/{promptset}/baseline.jsonl",
        lengths="results/answers/{promptset}/baseline.lengths.csv",
        baseline_model=baseline_model(),
        edited_model="results/models/edited_{edit}",
    output:
        kl="results/cost/{edit}/kl_{promptset}.csv",
    log:
        "logs/kl_divergence/{edit}/{promptset}.log",
    benchmark:
        "benchmarks/kl_divergence/{edit}/{promptset}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: THREADS_PER_JOB
    resources:
        gpu=GPUS_PER_JOB,
    params:
        max_tokens=lookup(dpath="cost/kl/max_tokens", within=config),
        batch_size=lookup(dpath="cost/kl/batch_size", within=config),
        resident=lookup(dpath="cost/kl/resident", within=config),
        chunk_prompts=lookup(dpath="cost/kl/chunk_prompts", within=config),
        device=lookup(dpath="compute/device", within=config),
    script:
        "../scripts/kl_divergence.py"


rule kl_summary:
    input:
        kl=expand("results/cost/{{edit}}/kl_{promptset}.csv", promptset=KL_PROMPTSETS),
    output:
        summary=report(
            "results/cost/{edit}/kl_summary.csv",
            caption="../report/table_kl_summary.rst",
            category="Cost of the edit",
            subcategory="{edit} edit",
            labels={"result": "Table: KL on harmless prompts"},
        ),
        ecdf=report(
            "results/figures/cost/{edit}/kl_ecdf.png",
            caption="../report/figure_kl_ecdf.rst",
            category="Cost of the edit",
            subcategory="{edit} edit",
            labels={"result": "Figure: KL per prompt (ECDF)"},
        ),
    log:
        "logs/kl_summary/{edit}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
        bootstrap_resamples=lookup(dpath="stats/bootstrap_resamples", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/kl_summary.py"


rule kl_comparisons:
    input:
        unpack(kl_tables_by_edit),
    output:
        comparisons=report(
            "results/cost/kl_comparisons.csv",
            caption="../report/table_kl_comparisons.rst",
            category="Cost of the edit",
            subcategory="edit against edit",
            labels={"result": "Table: paired KL difference between edits"},
        ),
    log:
        "logs/kl_comparisons.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        edits=EDITS,
        alpha=lookup(dpath="stats/alpha", within=config),
        bootstrap_resamples=lookup(dpath="stats/bootstrap_resamples", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/kl_comparisons.py"


rule compare_conditions:
    input:
        questions="results/questions/{promptset}.jsonl",
        judgments=expand(
            "results/judgments/{{judge}}/{{promptset}}/{condition}.csv",
            condition=CONDITIONS,
        ),
    output:
        comparisons=report(
            "results/stats/{judge}/comparisons/{promptset}.csv",
            caption="../report/table_comparisons.rst",
            category="Cost of the edit",
            subcategory="{judge} judge, paired comparisons",
            labels={"result": "Table: every pair of conditions, {promptset}"},
        ),
    log:
        "logs/compare_conditions/{judge}/{promptset}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
    script:
        "../scripts/compare_conditions.py"


rule xstest_stats:
    input:
        questions="results/questions/xstest.jsonl",
        judgments=expand(
            "results/judgments/{{judge}}/xstest/{condition}.csv", condition=CONDITIONS
        ),
    output:
        refusal=report(
            "results/stats/{judge}/xstest/refusal.csv",
            caption="../report/table_xstest_refusal.rst",
            category="Cost of the edit",
            subcategory="{judge} judge, XSTest",
            labels={"result": "Table: over-refusal and contrast refusal"},
        ),
        per_type=report(
            "results/stats/{judge}/xstest/per_type.csv",
            caption="../report/table_xstest_per_type.rst",
            category="Cost of the edit",
            subcategory="{judge} judge, XSTest",
            labels={"result": "Table: refusal per XSTest type (descriptive)"},
        ),
    log:
        "logs/xstest_stats/{judge}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
    script:
        "../scripts/xstest_stats.py"


rule tradeoff:
    input:
        unpack(tradeoff_inputs),
    output:
        table=report(
            "results/stats/{judge}/tradeoff.csv",
            caption="../report/tradeoff.rst",
            category="Cost of the edit",
            subcategory="{judge} judge, trade-off",
            labels={"result": "Table: refusal removed against behaviour moved"},
        ),
        figure=report(
            "results/figures/{judge}/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="Cost of the edit",
            subcategory="{judge} judge, trade-off",
            labels={"result": "Figure: refusal removed against behaviour moved"},
        ),
    log:
        "logs/tradeoff/{judge}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        edits=EDITS,
    script:
        "../scripts/tradeoff.py"
