from pathlib import Path

from refusal_ablation.judges.agreement import judge_agreement
from refusal_ablation.runtime import job_logging

# Judgment tables live at results/judgments/<judge>/<promptset>/<condition>.csv
paths_by_judge = {
    judge: [path for path in snakemake.input.judgments if Path(path).parts[-3] == judge]
    for judge in snakemake.params.judges
}

with job_logging(snakemake.log[0]):
    judge_agreement(paths_by_judge, snakemake.wildcards.promptset, snakemake.output.agreement)
