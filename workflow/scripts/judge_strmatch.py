from refusal_ablation.judges.strmatch import judge_strmatch
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    judge_strmatch(
        snakemake.input.questions,
        snakemake.input.answers,
        snakemake.wildcards.condition,
        snakemake.output.judgments,
    )
