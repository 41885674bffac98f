"""Snakemake adapter for rule `dose_response`: every edit variant side by side, per judge."""

from refusal_ablation.dose_response import write_dose_response
from refusal_ablation.runtime import job_logging

edits = list(snakemake.params.variants)
with job_logging(snakemake.log[0]):
    write_dose_response(
        variants=snakemake.params.variants,
        baseline_judgments=snakemake.input.baseline,
        edited_judgments=dict(zip(edits, snakemake.input.edited)),
        verify_tables=dict(zip(edits, snakemake.input.verify)),
        table_csv=snakemake.output.table,
        adjacent_csv=snakemake.output.adjacent,
        figure_paths=[snakemake.output.png, snakemake.output.svg],
        alpha=float(snakemake.params.alpha),
        title=f"Edit strength: refusal, leakage and cost ({snakemake.wildcards.judge} judge)",
        tradeoff_csv=snakemake.input.get("tradeoff"),
    )
