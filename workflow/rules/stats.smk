rule stats:
    input:
        baseline="results/judgments/{judge}/benchmark/baseline.csv",
        edited="results/judgments/{judge}/benchmark/edited_{edit}.csv",
        baseline_lengths="results/answers/benchmark/baseline.lengths.csv",
        edited_lengths="results/answers/benchmark/edited_{edit}.lengths.csv",
        questions="results/questions/benchmark.jsonl",
    output:
        overall="results/stats/{judge}/{edit}/overall.csv",
        paired="results/stats/{judge}/{edit}/paired.csv",
        flip_table="results/stats/{judge}/{edit}/flip_table.csv",
        per_category="results/stats/{judge}/{edit}/per_category.csv",
        answer_lengths="results/stats/{judge}/{edit}/answer_lengths.csv",
        summary="results/stats/{judge}/{edit}/summary.md",
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
        heldout="results/stats/{judge}/{edit}/heldout.csv",
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
        stability="results/figures/directions/direction_stability.png",
        separation="results/figures/directions/layer_separation.png",
    log:
        "logs/direction_figures.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/direction_figures.py"


rule figures:
    input:
        overall="results/stats/{judge}/{edit}/overall.csv",
        paired="results/stats/{judge}/{edit}/paired.csv",
        flip_table="results/stats/{judge}/{edit}/flip_table.csv",
        per_category="results/stats/{judge}/{edit}/per_category.csv",
        baseline_lengths="results/answers/benchmark/baseline.lengths.csv",
        edited_lengths="results/answers/benchmark/edited_{edit}.lengths.csv",
    output:
        overall="results/figures/{judge}/{edit}/overall_compliance.png",
        category_change="results/figures/{judge}/{edit}/category_change.png",
    log:
        "logs/figures/{judge}/{edit}.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/figures.py"
