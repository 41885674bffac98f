from refusal_ablation.judges.official import fetch_evaluator_from_spec
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    fetch_evaluator_from_spec(
        dict(snakemake.params.evaluator),
        snakemake.input.manifest,
        snakemake.output.evaluator,
    )
