from refusal_ablation.directions import run_fit
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    run_fit(
        snakemake.input.activations,
        snakemake.input.split,
        out_directions=snakemake.output.directions,
        out_fit_report=snakemake.output.fit_report,
        out_generalization=snakemake.output.generalization,
        seed=int(snakemake.params.seed),
        generalization=dict(snakemake.params.generalization),
        model=dict(snakemake.params.model),
    )
