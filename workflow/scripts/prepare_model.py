"""Snakemake adapter: materialise the configured model as a checkpoint directory."""

from refusal_ablation.model_prep import prepare_model
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    prepare_model(dict(snakemake.params.spec), snakemake.output.model)
