import tempfile

from refusal_ablation.gpus import allocate_gpus
from refusal_ablation.judges.official import judge_official
from refusal_ablation.runtime import job_logging

# the rule lists answers and judgment tables in the order of its conditions param
conditions = list(snakemake.params.conditions)
answers = dict(zip(conditions, snakemake.input.answers, strict=True))
outputs = dict(zip(conditions, snakemake.output.judgments, strict=True))
judge_model = snakemake.params.judge_model

# Snakemake counts GPU slots but does not pick devices; the allocator gives this job its own.
with job_logging(snakemake.log[0]), allocate_gpus(snakemake.resources.gpu):
    workdir = tempfile.mkdtemp(
        prefix=f"sorry-bench-judge-{snakemake.wildcards.promptset}-",
        dir=getattr(snakemake.resources, "tmpdir", None),
    )
    judge_official(
        snakemake.input.questions,
        answers,
        outputs,
        evaluator_dir=snakemake.input.evaluator,
        manifest_path=snakemake.input.manifest,
        judge_weights=snakemake.input.judge_model,
        bench_name=snakemake.params.bench_name,
        judge_prompt=snakemake.params.judge_prompt,
        judge_model_label=f"{judge_model['repo_id']}@{judge_model['revision']}",
        workdir=workdir,
    )
