from refusal_ablation.runtime import job_logging
from refusal_ablation.selection import run_selection

with job_logging(snakemake.log[0]):
    run_selection(
        model_dir=snakemake.input.model,
        directions_npz=snakemake.input.directions,
        split_csv=snakemake.input.split,
        out_csv=snakemake.output.table,
        out_json=snakemake.output.record,
        selection=snakemake.params.selection,
        batch_size=int(snakemake.params.batch_size),
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
