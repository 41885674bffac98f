"""Snakemake adapter: last-prompt-token activations of every prompt in the split file."""

from refusal_ablation.activations import run_activations
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    run_activations(
        split_csv=snakemake.input.split,
        model_dir=snakemake.input.model,
        out_npz=snakemake.output.activations,
        batch_size=snakemake.params.batch_size,
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
