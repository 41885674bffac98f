from refusal_ablation.runtime import job_logging
from refusal_ablation.split import run_split

with job_logging(snakemake.log[0]):
    run_split(
        snakemake.input.csv,
        snakemake.output.split,
        construction_areas=int(snakemake.params.construction_areas),
        prompts_per_label_per_area=int(snakemake.params.prompts_per_label_per_area),
        seed=int(snakemake.params.seed),
        expected_sha256=snakemake.params.sha256,
    )
