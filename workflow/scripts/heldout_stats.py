"""Snakemake adapter for rule `heldout_stats`: refusal on held-out safe and unsafe prompts."""

from refusal_ablation import edited_condition
from refusal_ablation.runtime import job_logging
from refusal_ablation.stats.rules import write_heldout_summary

with job_logging(snakemake.log[0]):
    write_heldout_summary(
        questions_jsonl=snakemake.input.questions,
        baseline_csv=snakemake.input.baseline,
        edited_csv=snakemake.input.edited,
        output_csv=snakemake.output.heldout,
        alpha=float(snakemake.params.alpha),
        edited_condition=edited_condition(snakemake.wildcards.edit),
    )
