"""Snakemake adapter for rule `figures`: compliance figures from the stats tables."""

from refusal_ablation.figures import write_figures
from refusal_ablation.runtime import job_logging


def figure_paths(name):
    """The PNG and, where the rule declares it, the SVG path of one figure."""
    return [p for p in (snakemake.output.get(name), snakemake.output.get(f"{name}_svg")) if p]


with job_logging(snakemake.log[0]):
    write_figures(
        overall_csv=snakemake.input.overall,
        paired_csv=snakemake.input.paired,
        flip_table_csv=snakemake.input.flip_table,
        per_category_csv=snakemake.input.per_category,
        baseline_lengths=snakemake.input.baseline_lengths,
        edited_lengths=snakemake.input.edited_lengths,
        overall=figure_paths("overall"),
        category_change=figure_paths("category_change"),
        flip_table=figure_paths("flip_table"),
        answer_lengths=figure_paths("answer_lengths"),
        subtitle=f"edit: {snakemake.wildcards.edit}; judge: {snakemake.wildcards.judge}",
    )
