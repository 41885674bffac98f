"""Snakemake adapter for rule `xstest_stats`: over-refusal on XSTest per condition and type."""

from refusal_ablation.cost import write_xstest_stats
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    write_xstest_stats(
        judgment_csvs=list(snakemake.input.judgments),
        questions_jsonl=snakemake.input.questions,
        rates_csv=snakemake.output.refusal,
        per_type_csv=snakemake.output.per_type,
        alpha=float(snakemake.params.alpha),
    )
