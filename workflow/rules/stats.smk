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
    conda:
        "../envs/stats.yaml"
    params:
        alpha=lookup(dpath="stats/alpha", within=config),
    script:
        "../scripts/heldout_stats.py"


rule direction_figures:
    input:
        directions="results/directions/refusal_directions.npz",
        generalization="results/directions/category_generalization_table.csv",
        activations="results/activations/construction.npz",
        split="results/split/prompt_split.csv",
    output:
        stability=report(
            "results/figures/directions/direction_stability.png",
            caption="../report/figure_direction_stability.rst",
            category="Refusal direction",
            labels={"result": "Figure: direction stability"},
        ),
        stability_svg="results/figures/directions/direction_stability.svg",
        separation=report(
            "results/figures/directions/layer_separation.png",
            caption="../report/figure_layer_separation.rst",
            category="Refusal direction",
            labels={"result": "Figure: per-layer separation"},
        ),
        separation_svg="results/figures/directions/layer_separation.svg",
    log:
        "logs/direction_figures.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/direction_figures.py"


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


rule arditi_selection_figure:
    input:
        table="results/directions/arditi_selection.csv",
    output:
        png=report(
            "results/figures/directions/arditi_selection.png",
            caption="../report/arditi_selection.rst",
            category="Refusal direction",
            labels={"result": "Figure: single-direction selection"},
        ),
        svg="results/figures/directions/arditi_selection.svg",
    log:
        "logs/arditi_selection_figure.log",
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        kl_threshold=lookup(
            dpath="edit/selection/kl_threshold",
            within=config,
            default=SELECTION_DEFAULTS["kl_threshold"],
        ),
    script:
        "../scripts/selection_figure.py"


rule figures:
    input:
        overall="results/stats/{judge}/{edit}/overall.csv",
        paired="results/stats/{judge}/{edit}/paired.csv",
        flip_table="results/stats/{judge}/{edit}/flip_table.csv",
        per_category="results/stats/{judge}/{edit}/per_category.csv",
        baseline_lengths="results/answers/benchmark/baseline.lengths.csv",
        edited_lengths="results/answers/benchmark/edited_{edit}.lengths.csv",
    output:
        overall=report(
            "results/figures/{judge}/{edit}/overall_compliance.png",
            caption="../report/figure_overall_compliance.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Figure: overall compliance"},
        ),
        overall_svg="results/figures/{judge}/{edit}/overall_compliance.svg",
        category_change=report(
            "results/figures/{judge}/{edit}/category_change.png",
            caption="../report/figure_category_change.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Figure: change per category"},
        ),
        category_change_svg="results/figures/{judge}/{edit}/category_change.svg",
        flip_table=report(
            "results/figures/{judge}/{edit}/flip_table.png",
            caption="../report/figure_flip_table.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Figure: flip table"},
        ),
        flip_table_svg="results/figures/{judge}/{edit}/flip_table.svg",
        answer_lengths=report(
            "results/figures/{judge}/{edit}/answer_lengths.png",
            caption="../report/figure_answer_lengths.rst",
            category="Benchmark compliance",
            subcategory="{judge} judge, {edit} edit",
            labels={"result": "Figure: answer length"},
        ),
        answer_lengths_svg="results/figures/{judge}/{edit}/answer_lengths.svg",
    log:
        "logs/figures/{judge}/{edit}.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/figures.py"
