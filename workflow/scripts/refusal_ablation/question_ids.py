"""The one coverage check of question ids: which are missing, which extra, which repeated.

Answers, judgments and answer lengths must each cover the benchmark's questions exactly
once; every reader that checks this says what is wrong in the same words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def describe_ids(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def id_mismatch(expected: Iterable[int], found: Sequence[int]) -> str | None:
    """Say which ids are missing, extra or repeated; None when ``found`` has each expected id once."""
    expected_set = set(expected)
    counts = Counter(found)
    missing = sorted(expected_set - counts.keys())
    extra = sorted(counts.keys() - expected_set)
    repeated = sorted(i for i, n in counts.items() if n > 1 and i in expected_set)
    problems = []
    if missing:
        problems.append(f"missing question ids: {describe_ids(missing)}")
    if extra:
        problems.append(f"ids that are not questions: {describe_ids(extra)}")
    if repeated:
        problems.append(f"question ids given more than once: {describe_ids(repeated)}")
    return "; ".join(problems) or None
