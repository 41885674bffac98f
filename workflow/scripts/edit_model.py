from refusal_ablation.edit import edit_checkpoint
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    edit_checkpoint(
        model_dir=snakemake.input.model,
        directions_npz=snakemake.input.directions,
        out_dir=snakemake.output.model,
        method=snakemake.params.method,
        restore_norms=bool(snakemake.params.restore_norms),
        arditi_layer=snakemake.params.arditi_layer,
    )
