"""Snakemake adapter: greedy answers of one model condition to one shard of a question file."""

from refusal_ablation.generation import generate_shard
from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.runtime import job_logging

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    generate_shard(
        questions_jsonl=snakemake.input.questions,
        model_dir=snakemake.input.model,
        out_answers=snakemake.output.answers,
        out_lengths=snakemake.output.lengths,
        condition=snakemake.wildcards.condition,
        shard=int(snakemake.wildcards.shard),
        n_shards=int(snakemake.wildcards.nshards),
        generation=dict(snakemake.params.generation),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
