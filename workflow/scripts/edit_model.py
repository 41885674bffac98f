from refusal_ablation.edit import edit_checkpoint
from refusal_ablation.runtime import job_logging
from refusal_ablation.selection import read_selected_layer

variant = snakemake.params.variant
restore_norms = snakemake.params.restore_norms
arditi_layer = snakemake.params.arditi_layer

with job_logging(snakemake.log[0]):
    if variant["method"] == "arditi" and arditi_layer is None and snakemake.input.get("selection"):
        arditi_layer = read_selected_layer(snakemake.input.selection)
    edit_checkpoint(
        model_dir=snakemake.input.model,
        directions_npz=snakemake.input.directions,
        out_dir=snakemake.output.model,
        method=variant["method"],
        restore_norms=True if restore_norms is None else bool(restore_norms),
        arditi_layer=arditi_layer,
        scale=variant["scale"],
        layers=variant["layers"],
        components=variant["components"],
    )
