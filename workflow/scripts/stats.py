"""Snakemake adapter for rule `stats`: paired statistics of baseline vs edited judgments."""

from refusal_ablation import edited_condition
from refusal_ablation.cost import cost_sentences_from_files
from refusal_ablation.runtime import job_logging
from refusal_ablation.stats.rules import write_stats

with job_logging(snakemake.log[0]):
    cost = cost_sentences_from_files(
        snakemake.input.get("kl_summary"),
        (
            (snakemake.input.xstest_baseline, snakemake.input.xstest_edited, snakemake.input.xstest_questions)
            if snakemake.input.get("xstest_questions")
            else None
        ),
        edited_condition(snakemake.wildcards.edit),
        float(snakemake.params.alpha),
        snakemake.wildcards.judge,
    )
    write_stats(
        baseline_judgments=snakemake.input.baseline,
        edited_judgments=snakemake.input.edited,
        baseline_lengths=snakemake.input.baseline_lengths,
        edited_lengths=snakemake.input.edited_lengths,
        questions=snakemake.input.questions,
        overall=snakemake.output.overall,
        paired=snakemake.output.paired,
        flip_table_csv=snakemake.output.flip_table,
        per_category=snakemake.output.per_category,
        answer_lengths=snakemake.output.answer_lengths,
        summary=snakemake.output.summary,
        summary_page=snakemake.output.get("summary_page"),
        alpha=float(snakemake.params.alpha),
        bootstrap_resamples=int(snakemake.params.bootstrap_resamples),
        seed=int(snakemake.params.seed),
        edited_condition=edited_condition(snakemake.wildcards.edit),
        extra_sentences=cost,
        title=f"Refusal ablation, edit '{snakemake.wildcards.edit}', judge '{snakemake.wildcards.judge}'",
    )
