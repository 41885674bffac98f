"""Snakemake adapter for rule `compare_conditions`: every pair of conditions, paired by prompt."""

from refusal_ablation.cost import write_comparisons
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    write_comparisons(
        judgment_csvs=list(snakemake.input.judgments),
        questions_jsonl=snakemake.input.questions,
        out_csv=snakemake.output.comparisons,
        alpha=float(snakemake.params.alpha),
    )
