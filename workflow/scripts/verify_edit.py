from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.runtime import job_logging
from refusal_ablation.verify import run_verify_edit

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    run_verify_edit(
        baseline_model=snakemake.input.baseline_model,
        edited_model=snakemake.input.edited_model,
        directions_npz=snakemake.input.directions,
        split_csv=snakemake.input.split,
        out_csv=snakemake.output.csv,
        out_png=snakemake.output.png,
        edit=snakemake.wildcards.edit,
        batch_size=int(snakemake.params.batch_size),
        device=snakemake.params.device,
        threads=snakemake.threads,
        prompts_per_label_per_area=snakemake.params.prompts_per_label_per_area,
    )
