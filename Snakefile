from snakemake.utils import min_version

min_version("9.0")


# A --configfile on the command line replaces the reference config instead of being
# merged into it, so the demo never inherits reference-only keys (pins, judge settings).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# The rule files in pipeline order; common.smk holds the config checks and input functions.
# Cheap bookkeeping rules say `localrule: True` where they are defined: they run where
# Snakemake runs instead of waiting in a cluster queue.
include: "workflow/rules/common.smk"
include: "workflow/rules/prepare_model.smk"
include: "workflow/rules/construction.smk"
include: "workflow/rules/directions.smk"
include: "workflow/rules/edit.smk"
include: "workflow/rules/answers.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/cost.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        final_targets(),
