from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.runtime import job_logging
from refusal_ablation.tune import refusal_tune

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    refusal_tune(
        snakemake.input.model,
        snakemake.input.split,
        snakemake.output.model,
        snakemake.output.losses,
        tune=dict(snakemake.params.tune),
        seed=int(snakemake.params.seed),
        device=snakemake.params.device,
        # the rule may name the benchmark questions so that a leaked benchmark prompt fails the tune
        benchmark_questions=snakemake.input.get("benchmark"),
        threads=snakemake.threads,
    )
