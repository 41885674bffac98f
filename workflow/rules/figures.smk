# Step 9, the figures: the refusal directions, the single-direction selection and the benchmark
# compliance figures per judge and edit.


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
    localrule: True
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/direction_figures.py"


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
    localrule: True
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/figures.py"
