from refusal_ablation.direction_figures import run_direction_figures
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    run_direction_figures(
        snakemake.input.generalization,
        snakemake.input.directions,
        snakemake.input.activations,
        snakemake.input.split,
        stability_png=snakemake.output.stability,
        separation_png=snakemake.output.separation,
    )
