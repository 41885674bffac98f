from refusal_ablation.benchmark import heldout_questions
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    heldout_questions(snakemake.input.split, snakemake.output.questions)
