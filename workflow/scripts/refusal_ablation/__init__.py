"""Refusal-direction ablation evaluation: the library behind the Snakemake workflow.

Each pipeline stage is one module; the scripts in ``workflow/scripts`` only unpack
Snakemake's inputs, outputs and params and call into these. Heavy imports (torch,
transformers) stay inside the modules that need them, so the stats environment never
imports torch.
"""

CONDITION_BASELINE = "baseline"
EDITED_PREFIX = "edited_"


def edited_condition(edit: str) -> str:
    """Condition name of the answers produced by the model edited with ``edit``."""
    return f"{EDITED_PREFIX}{edit}"
