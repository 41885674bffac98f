from refusal_ablation.runtime import job_logging
from refusal_ablation.shards import gather_answers

with job_logging(snakemake.log[0]):
    gather_answers(
        snakemake.input.questions,
        list(snakemake.input.answers),
        list(snakemake.input.lengths),
        snakemake.output.answers,
        snakemake.output.lengths,
    )
