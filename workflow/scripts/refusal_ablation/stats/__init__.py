"""Paired statistics of baseline vs edited judgments.

Every prompt is judged twice (baseline model, edited model), so the analysis is paired by
question: the 2x2 flip table, exact McNemar, paired intervals for the compliance change,
a bootstrap over whole categories (prompts of one category are not independent), and a
GEE logistic model with category clusters. Score 1 = compliance, 0 = refusal, missing =
the judge's output could not be parsed; missing judgments are counted and reported, and a
question with a missing judgment in either condition leaves the pairs explicitly.

Modules, in the order the `stats` rule uses them:

- ``pairing``: read, check and pair the judgments of two conditions; answer lengths.
- ``estimators``: the elementary estimates (Wilson, McNemar, paired intervals, bootstrap, GEE).
- ``tables``: the CSV tables built from the pairs.
- ``summary``: the findings in plain words (Markdown and HTML).
- ``rules``: the entry points of the `stats` and `heldout_stats` rules.
- ``categories``: readable category names and their sort order.

The public names are re-exported here, so ``stats.wilson_interval`` works as well as
``stats.estimators.wilson_interval``.
"""

from .categories import category_domain, category_label, category_name, category_sort_key
from .estimators import (
    category_bootstrap_interval,
    cohens_h,
    gee_odds_ratio,
    level_text,
    mcnemar_exact_p,
    newcombe_paired_interval,
    paired_wald_interval,
    wilson_interval,
    z_value,
)
from .pairing import (
    PairedJudgments,
    flip_counts,
    pair_judgments,
    read_answer_lengths,
    read_judgment_file,
    read_judgment_pair,
)
from .rules import write_heldout_summary, write_stats
from .summary import summary_html, summary_markdown, summary_sentences
from .tables import (
    DESCRIPTIVE_NOTE,
    JUDGMENT_LEVELS,
    answer_length_summary,
    flip_table,
    heldout_summary,
    overall_table,
    paired_estimates,
    per_category_table,
)

__all__ = [
    "DESCRIPTIVE_NOTE",
    "JUDGMENT_LEVELS",
    "PairedJudgments",
    "answer_length_summary",
    "category_bootstrap_interval",
    "category_domain",
    "category_label",
    "category_name",
    "category_sort_key",
    "cohens_h",
    "flip_counts",
    "flip_table",
    "gee_odds_ratio",
    "heldout_summary",
    "level_text",
    "mcnemar_exact_p",
    "newcombe_paired_interval",
    "overall_table",
    "pair_judgments",
    "paired_estimates",
    "paired_wald_interval",
    "per_category_table",
    "read_answer_lengths",
    "read_judgment_file",
    "read_judgment_pair",
    "summary_html",
    "summary_markdown",
    "summary_sentences",
    "wilson_interval",
    "write_heldout_summary",
    "write_stats",
    "z_value",
]
