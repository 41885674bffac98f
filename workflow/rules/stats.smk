# Step 8, the statistics: paired benchmark statistics per judge and edit, held-out refusal, and
# the dose-response table across edit variants.


rule stats:
    input:
        unpack(cost_summary_inputs),
        baseline="results/judgments/{judge}/benchmark/baseline.csv",
        edited="results/judgments/{judge}/benchmark/edited_{edit}.csv",
        baseline_lengths="results/answers/benchmark/baseline.lengths.csv",
        edited_lengths="results/answers/benchmark/edited_{edit}.lengths.csv",
        questions="results/questions/benchmark.jsonl",
    output:
        overall=report(
            "results/stats/{judge}/{edit}/overall.csv",
            caption="../report/table_overall.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: compliance and refusal per condition"},
        ),
        paired=report(
            "results/stats/{judge}/{edit}/paired.csv",
            caption="../report/table_paired.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: paired estimates"},
        ),
        flip_table=report(
            "results/stats/{judge}/{edit}/flip_table.csv",
            caption="../report/table_flip.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: flip table"},
        ),
        per_category=report(
            "results/stats/{judge}/{edit}/per_category.csv",
            caption="../report/table_per_category.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: per category (descriptive)"},
        ),
        answer_lengths=report(
            "results/stats/{judge}/{edit}/answer_lengths.csv",
            caption="../report/table_answer_lengths.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: answer length"},
        ),
        summary="results/stats/{judge}/{edit}/summary.md",
        summary_page=report(
            "results/stats/{judge}/{edit}/summary.html",
            caption="../report/summary.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Summary (text and every table)"},
        ),
    log:
        "logs/stats/{judge}/{edit}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
        bootstrap_resamples=lookup(dpath="stats/bootstrap_resamples", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/stats.py"


rule heldout_stats:
    input:
        questions="results/questions/heldout.jsonl",
        baseline="results/judgments/{judge}/heldout/baseline.csv",
        edited="results/judgments/{judge}/heldout/edited_{edit}.csv",
    output:
        heldout=report(
            "results/stats/{judge}/{edit}/heldout.csv",
            caption="../report/heldout.rst",
            category="Held-out prompts",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Table: refusal on held-out safe and unsafe prompts"},
        ),
    log:
        "logs/heldout_stats/{judge}/{edit}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
    script:
        "../scripts/heldout_stats.py"


rule dose_response:
    input:
        baseline="results/judgments/{judge}/benchmark/baseline.csv",
        edited=expand(
            "results/judgments/{{judge}}/benchmark/edited_{edit}.csv", edit=EDITS
        ),
        verify=expand("results/verify/{edit}/residual_projection.csv", edit=EDITS),
        tradeoff=lambda wildcards: (
            f"results/stats/{wildcards.judge}/tradeoff.csv" if COST else []
        ),
    output:
        table=report(
            "results/stats/{judge}/dose_response.csv",
            caption="../report/dose_response.rst",
            category="Edit variants",
            subcategory="{judge} judge",
            labels={"result": "Table: every edit variant"},
        ),
        adjacent=report(
            "results/stats/{judge}/dose_response_adjacent.csv",
            caption="../report/dose_response.rst",
            category="Edit variants",
            subcategory="{judge} judge",
            labels={"result": "Table: neighbouring strengths"},
        ),
        png=report(
            "results/figures/{judge}/dose_response.png",
            caption="../report/dose_response.rst",
            category="Edit variants",
            subcategory="{judge} judge",
            labels={"result": "Figure: refusal and leakage against edit scale"},
        ),
        svg="results/figures/{judge}/dose_response.svg",
    log:
        "logs/dose_response/{judge}.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        variants=EDIT_VARIANTS,
        alpha=lookup(dpath="stats/alpha", within=config),
    script:
        "../scripts/dose_response.py"
