"""Snakemake adapter for rule `xstest_questions`: XSTest prompts as question records."""

from refusal_ablation.runtime import job_logging
from refusal_ablation.xstest import xstest_questions

with job_logging(snakemake.log[0]):
    xstest_questions(snakemake.input.csv, snakemake.output.questions, snakemake.params.sha256)
