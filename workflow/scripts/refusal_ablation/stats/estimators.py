"""Elementary paired estimates: Wilson, exact McNemar, paired Wald and Newcombe intervals,
Cohen's h, a category cluster bootstrap and a GEE odds ratio with category clusters."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

logger = logging.getLogger(__name__)


def level_text(alpha: float) -> str:
    """The interval's name in tables and sentences, e.g. "95% CI"."""
    return f"{100 * (1 - alpha):g}% CI"


def z_value(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return float(norm.ppf(1 - alpha / 2))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n is 0."""
    if n == 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n, got {successes} of {n}")
    z = z_value(alpha)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; float rounding would miss it.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return (low, high)


def mcnemar_exact_p(to_compliance: int, to_refusal: int) -> float:
    """Exact two-sided McNemar p: binomial test of the discordant pairs against 1/2."""
    from statsmodels.stats.contingency_tables import mcnemar

    if to_compliance + to_refusal == 0:
        return 1.0
    table = [[0, to_refusal], [to_compliance, 0]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_wald_interval(to_compliance: int, to_refusal: int, n: int, alpha: float = 0.05):
    """Difference in paired proportions (b - c)/n with its Wald interval.

    Var = ((b + c) - (b - c)^2 / n) / n^2, the usual asymptotic variance for matched pairs.
    """
    if n == 0:
        return (math.nan, math.nan, math.nan)
    b, c = to_compliance, to_refusal
    difference = (b - c) / n
    variance = max((b + c) - (b - c) ** 2 / n, 0.0) / n**2
    half_width = z_value(alpha) * math.sqrt(variance)
    return (difference, difference - half_width, difference + half_width)


def newcombe_paired_interval(a: int, b: int, c: int, d: int, alpha: float = 0.05):
    """Newcombe's (1998) hybrid score interval for a difference of paired proportions.

    Method 10 of Newcombe, Stat Med 17:2635. Table of pairs: ``a`` positive in both,
    ``b`` positive only in the first, ``c`` positive only in the second, ``d`` in neither;
    the difference is p1 - p2 = (b - c)/n. Wilson intervals of the two marginal proportions
    are combined square-and-add style, with the correlation of the marginals estimated by
    phi, which is shrunk towards 0 by n/2 when positive (Newcombe's correction).
    """
    n = a + b + c + d
    if n == 0:
        return (math.nan, math.nan, math.nan)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, alpha)
    l2, u2 = wilson_interval(a + c, n, alpha)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if margins == 0:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(margins)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(margins)
    difference = p1 - p2
    lower_term = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper_term = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    return (
        difference,
        max(-1.0, difference - math.sqrt(max(lower_term, 0.0))),
        min(1.0, difference + math.sqrt(max(upper_term, 0.0))),
    )


def cohens_h(p_before: float, p_after: float) -> float:
    """Cohen's h = 2 asin(sqrt(p_after)) - 2 asin(sqrt(p_before))."""
    return 2 * math.asin(math.sqrt(p_after)) - 2 * math.asin(math.sqrt(p_before))


def category_bootstrap_interval(
    categories: Sequence[str],
    baseline_scores: Sequence[float],
    edited_scores: Sequence[float],
    alpha: float = 0.05,
    resamples: int = 10000,
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """Percentile interval of the paired compliance difference, resampling whole categories.

    Each resample draws as many categories as there are, with replacement, and pools all of
    their prompts; returns (low, high, the resampled differences).
    """
    if resamples < 1:
        raise ValueError(f"bootstrap resamples must be at least 1, got {resamples}")
    frame = pd.DataFrame(
        {
            "category": list(map(str, categories)),
            "change": np.asarray(edited_scores, dtype=float) - np.asarray(baseline_scores, dtype=float),
        }
    )
    per_category = frame.groupby("category", sort=True)["change"].agg(["sum", "count"])
    n_categories = len(per_category)
    if n_categories < 2:
        return (math.nan, math.nan, np.array([]))
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_categories, size=(resamples, n_categories))
    sums = per_category["sum"].to_numpy()[drawn].sum(axis=1)
    counts = per_category["count"].to_numpy()[drawn].sum(axis=1)
    differences = sums / counts
    low, high = np.quantile(differences, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high), differences)


def gee_odds_ratio(
    categories: Sequence[str],
    baseline_scores: Sequence[float],
    edited_scores: Sequence[float],
    alpha: float = 0.05,
) -> dict:
    """GEE logistic regression of compliance on condition, exchangeable within category.

    Returns the odds ratio (edited vs baseline), its robust (sandwich) interval and Wald p,
    or NaNs with the reason in ``note`` where the model is not estimable.
    """
    import statsmodels.api as sm

    categories = list(map(str, categories))
    baseline_scores = np.asarray(baseline_scores, dtype=float)
    edited_scores = np.asarray(edited_scores, dtype=float)
    result = {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "note": ""}
    if len(set(categories)) < 2:
        result["note"] = "not estimable: fewer than 2 category clusters"
        return result
    for name, scores in (("baseline", baseline_scores), ("edited", edited_scores)):
        if scores.min() == scores.max():
            outcome = "compliance" if scores.max() == 1 else "refusal"
            result["note"] = f"not estimable: every {name} judgment is {outcome} (separation)"
            return result
    n = len(categories)
    endog = np.concatenate([baseline_scores, edited_scores])
    edited_indicator = np.concatenate([np.zeros(n), np.ones(n)])
    exog = np.column_stack([np.ones(2 * n), edited_indicator])
    groups = pd.factorize(pd.Series(categories + categories))[0]
    model = sm.GEE(
        endog,
        exog,
        groups=groups,
        family=sm.families.Binomial(),
        cov_struct=sm.cov_struct.Exchangeable(),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = model.fit()
        except Exception as exc:  # statsmodels raises several types on degenerate data
            result["note"] = f"not estimable: GEE failed ({type(exc).__name__}: {exc})"
            return result
    # Convergence and numerical warnings qualify the estimate; library deprecations do not.
    ignored = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
    messages = sorted({str(w.message).splitlines()[0] for w in caught if not issubclass(w.category, ignored)})
    for message in messages:
        logger.warning("GEE: %s", message)
    coefficient = float(fit.params[1])
    low, high = (float(v) for v in np.asarray(fit.conf_int(alpha=alpha))[1])
    result.update(
        value=math.exp(coefficient),
        ci_low=math.exp(low),
        ci_high=math.exp(high),
        p_value=float(fit.pvalues[1]),
        note="; ".join(messages),
    )
    return result
