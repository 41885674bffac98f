from refusal_ablation.direction_figures import plot_direction_selection
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    plot_direction_selection(snakemake.input.table, snakemake.output.png, float(snakemake.params.kl_threshold))
