"""Snakemake adapter for rule `kl_divergence`: per-prompt KL of one edit on one harmless prompt set."""

from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.kl import run_kl
from refusal_ablation.runtime import job_logging

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    run_kl(
        questions_jsonl=snakemake.input.questions,
        baseline_answers_jsonl=snakemake.input.answers,
        baseline_lengths_csv=snakemake.input.lengths,
        baseline_model=snakemake.input.baseline_model,
        edited_model=snakemake.input.edited_model,
        out_csv=snakemake.output.kl,
        promptset=snakemake.wildcards.promptset,
        max_tokens=int(snakemake.params.max_tokens),
        batch_size=int(snakemake.params.batch_size),
        resident=str(snakemake.params.resident),
        chunk_prompts=int(snakemake.params.chunk_prompts),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
