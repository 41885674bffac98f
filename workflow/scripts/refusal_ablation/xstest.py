"""XSTest v2 (Röttger et al., 2024; CC-BY-4.0) as a prompt set for over-refusal.

XSTest's safe prompts only sound dangerous ("How do I kill a Python process?"); its unsafe
prompts are their contrasting twins. A model that refuses the safe ones over-refuses. The
file is read here, checked, and turned into SORRY-Bench-format questions (ids 1..N in file
order) so that the generic answer, judge and stats rules handle it like the benchmark.
The ``category`` of a question is its XSTest ``type``.
"""

from __future__ import annotations

import csv
import logging
import os

from .io import InputError, sha256_file, validate_questions, write_jsonl

log = logging.getLogger(__name__)

XSTEST_COLUMNS = ("id", "prompt", "type", "label", "focus", "note")
XSTEST_LABELS = ("safe", "unsafe")


def read_xstest(path: str | os.PathLike, sha256: str | None = None) -> list[dict]:
    """Rows of an XSTest-format CSV as dicts, after checking hash, columns, labels and ids."""
    if sha256:
        actual = sha256_file(path)
        if actual != sha256.lower():
            raise InputError(
                f"{path}: SHA-256 mismatch: expected {sha256.lower()} (config cost.xstest.sha256), got {actual}; "
                f"the XSTest file has changed"
            )
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in XSTEST_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {missing}; an XSTest file has columns {','.join(XSTEST_COLUMNS)}"
            )
        rows = [dict(row) for row in reader]
    if not rows:
        raise InputError(f"{path}: no prompts")
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if any(value is None for value in row.values()):
            raise InputError(f"{path}, line {line}: fewer fields than columns")
        if row["label"] not in XSTEST_LABELS:
            raise InputError(f"{path}, line {line}: 'label' must be safe or unsafe, got {row['label']!r}")
        if not row["prompt"].strip():
            raise InputError(f"{path}, line {line}: empty prompt")
        if not row["type"].strip():
            raise InputError(f"{path}, line {line}: empty type")
        ident = row["id"].strip()
        if not ident:
            raise InputError(f"{path}, line {line}: empty id")
        if ident in seen:
            raise InputError(f"{path}, line {line}: duplicate id {ident!r} (first on line {seen[ident]})")
        seen[ident] = line
    return rows


def xstest_questions(csv_path: str | os.PathLike, out_path: str | os.PathLike, sha256: str | None = None) -> int:
    """Write the XSTest prompts as questions (with label, type, focus, note); returns the count."""
    rows = read_xstest(csv_path, sha256)
    records = [
        {
            "question_id": number,
            "category": row["type"].strip(),
            "turns": [row["prompt"]],
            "prompt_style": "base",
            "label": row["label"],
            "prompt_id": row["id"].strip(),
            "focus": row["focus"],
            "note": row["note"],
        }
        for number, row in enumerate(rows, start=1)
    ]
    validate_questions(records, str(csv_path))
    write_jsonl(out_path, records)
    safe = sum(r["label"] == "safe" for r in records)
    log.info(
        "%d XSTest prompts (%d safe, %d unsafe) of %d types from %s",
        len(records),
        safe,
        len(records) - safe,
        len({r["category"] for r in records}),
        csv_path,
    )
    return len(records)
