"""Snakemake adapter for rule `judge_agreement`: every judge against every other, one prompt set."""

from refusal_ablation.judges.agreement import judge_agreement
from refusal_ablation.runtime import job_logging

# the rule names each judge's judgment tables judgments_<judge>
paths_by_judge = {judge: list(snakemake.input[f"judgments_{judge}"]) for judge in snakemake.params.judges}

with job_logging(snakemake.log[0]):
    judge_agreement(paths_by_judge, snakemake.wildcards.promptset, snakemake.output.agreement)
