from refusal_ablation.benchmark import prepare_benchmark_questions
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    prepare_benchmark_questions(dict(snakemake.params.benchmark), snakemake.output.questions)
