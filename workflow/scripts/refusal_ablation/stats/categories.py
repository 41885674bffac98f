"""Category labels: readable names, axis labels, domains and sort order of benchmark categories."""

from __future__ import annotations

from ..benchmark import CATEGORY_NAMES, DOMAIN_RANGES


def category_name(category: str) -> str:
    """Readable name of a category: SORRY-Bench id -> name; policy area -> words."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return CATEGORY_NAMES[category]
    return category.replace("_", " ")


def category_label(category: str) -> str:
    """Axis label: the name, plus the SORRY-Bench id where there is one."""
    category = str(category)
    if category in CATEGORY_NAMES:
        return f"{CATEGORY_NAMES[category]} ({category})"
    return category_name(category)


def category_domain(category: str) -> str:
    category = str(category)
    if category.isdigit():
        number = int(category)
        for low, high, domain in DOMAIN_RANGES:
            if low <= number <= high:
                return domain
    return ""


def category_sort_key(category: str):
    """Numeric ids in numeric order, then names alphabetically."""
    category = str(category)
    return (0, int(category), "") if category.isdigit() else (1, 0, category)
