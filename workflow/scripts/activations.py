"""Snakemake adapter: last-prompt-token activations of every prompt in the split file."""

from refusal_ablation.activations import run_activations
from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.runtime import job_logging

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    run_activations(
        split_csv=snakemake.input.split,
        model_dir=snakemake.input.model,
        out_npz=snakemake.output.activations,
        batch_size=snakemake.params.batch_size,
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
