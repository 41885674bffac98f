from refusal_ablation.judges.official import download_judge
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    download_judge(
        snakemake.params.judge_model["repo_id"],
        snakemake.params.judge_model["revision"],
        snakemake.output.judge_model,
    )
