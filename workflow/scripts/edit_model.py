from refusal_ablation.edit import edit_checkpoint
from refusal_ablation.runtime import job_logging

variant = snakemake.params.variant
restore_norms = snakemake.params.restore_norms

with job_logging(snakemake.log[0]):
    edit_checkpoint(
        model_dir=snakemake.input.model,
        directions_npz=snakemake.input.directions,
        out_dir=snakemake.output.model,
        method=variant["method"],
        restore_norms=True if restore_norms is None else bool(restore_norms),
        arditi_layer=snakemake.params.arditi_layer,
        scale=variant["scale"],
        layers=variant["layers"],
        components=variant["components"],
    )
