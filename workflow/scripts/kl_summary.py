"""Snakemake adapter for rule `kl_summary`: KL summary and ECDF figure of one edit."""

from refusal_ablation.cost import write_kl_summary
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    write_kl_summary(
        kl_csvs=list(snakemake.input.kl),
        summary_csv=snakemake.output.summary,
        ecdf_png=snakemake.output.ecdf,
        edit=snakemake.wildcards.edit,
        alpha=float(snakemake.params.alpha),
        resamples=int(snakemake.params.bootstrap_resamples),
        seed=int(snakemake.params.seed),
    )
