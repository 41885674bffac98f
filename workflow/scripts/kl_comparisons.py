"""Snakemake adapter for rule `kl_comparisons`: paired KL difference between edits."""

from refusal_ablation import edited_condition
from refusal_ablation.cost import write_kl_comparisons
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    write_kl_comparisons(
        kl_csvs={edited_condition(e): list(snakemake.input[f"kl_{e}"]) for e in snakemake.params.edits},
        out_csv=snakemake.output.comparisons,
        alpha=float(snakemake.params.alpha),
        resamples=int(snakemake.params.bootstrap_resamples),
        seed=int(snakemake.params.seed),
    )
