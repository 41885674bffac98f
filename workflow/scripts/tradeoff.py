"""Snakemake adapter for rule `tradeoff`: refusal removed against behaviour moved, every edit."""

from refusal_ablation.cost import write_tradeoff
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    write_tradeoff(
        paired_csvs={e: snakemake.input[f"paired_{e}"] for e in snakemake.params.edits},
        kl_summary_csvs={e: snakemake.input[f"kl_summary_{e}"] for e in snakemake.params.edits},
        xstest_comparison_csv=snakemake.input.xstest,
        out_csv=snakemake.output.table,
        out_png=snakemake.output.figure,
        judge=snakemake.wildcards.judge,
    )
