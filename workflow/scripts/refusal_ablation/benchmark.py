"""The prompt sets that get answered: the benchmark questions and the held-out check.

Both end up in SORRY-Bench's ``question.jsonl`` format with question ids 1..N in file
order, which the official judge needs (it pairs answers with ``questions[id - 1]``).
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from .io import (
    InputError,
    read_jsonl_lines,
    validate_questions,
    write_jsonl,
)
from .split import TEST, split_rows

log = logging.getLogger(__name__)

# SORRY-Bench 2025-03: the question's `category` field is the id as a string.
CATEGORY_NAMES = {
    "1": "Personal Insulting Words",
    "2": "Social-group Insulting Words",
    "3": "Threatening Words",
    "4": "Lewd and Obscene Words",
    "5": "Libelous Words",
    "6": "Self-Harm",
    "7": "Violent Crimes",
    "8": "Harassment",
    "9": "Sexual Crimes",
    "10": "Property Crimes",
    "11": "Public Order Crimes",
    "12": "System Intrusion",
    "13": "Malware Code Generation",
    "14": "Fraud",
    "15": "Financial Crimes",
    "16": "IP Infringement",
    "17": "PII Violations",
    "18": "Illegal Crafting",
    "19": "Terrorism",
    "20": "Child-related Crimes",
    "21": "Animal-related Crimes",
    "22": "Environmental Crimes",
    "23": "Evasion of Law Enforcement",
    "24": "Human Elimination",
    "25": "Advice on Adult Content",
    "26": "Sexual Explicit Content Generation",
    "27": "Non-sexual Explicit Content Generation",
    "28": "Fake News Generation",
    "29": "False Advertising",
    "30": "Advice on Discrimination Behaviors",
    "31": "Military Use",
    "32": "Political Belief Promotion",
    "33": "Ethical Belief Promotion",
    "34": "Religion Promotion",
    "35": "Social Stereotype Promotion",
    "36": "Extremist Content Promotion",
    "37": "Conspiracy Theories Promotion",
    "38": "False Common Knowledge Promotion",
    "39": "Harmful & Unhealthy Behaviors Promotion",
    "40": "Medical Advice",
    "41": "Financial Advice",
    "42": "Legal Consulting Advice",
    "43": "Governance Decision Advice",
    "44": "Dangerous Machinery Operation Advice",
}

# SORRY-Bench's four domains, as ranges of category ids.
DOMAIN_RANGES = [
    (1, 5, "hate speech generation"),
    (6, 24, "assistance with crimes or torts"),
    (25, 39, "potentially inappropriate topics"),
    (40, 44, "potentially unqualified advice"),
]


def select_prompt_style(
    records: list[dict], prompt_style: str, source: str, lines: list[int] | None = None
) -> tuple[list[dict], list[int] | None]:
    """Keep one prompt style (records without the field count as ``base``), with their lines."""
    if not records:
        raise InputError(f"{source}: the file is empty (no question records)")
    keep = [i for i, r in enumerate(records) if r.get("prompt_style", "base") == prompt_style]
    if not keep:
        styles = sorted({str(r.get("prompt_style", "base")) for r in records})
        raise InputError(f"{source}: no questions with prompt_style '{prompt_style}' (found {styles})")
    return [records[i] for i in keep], (None if lines is None else [lines[i] for i in keep])


def read_benchmark_file(path: str | os.PathLike, prompt_style: str) -> list[dict]:
    """The questions of one prompt style from a ``question.jsonl``, validated.

    Messages name the file and its line. ``common.smk`` calls this on a local benchmark
    before any job runs, and ``benchmark_questions`` calls it again on what it reads.
    """
    records, lines = read_jsonl_lines(path)
    records, lines = select_prompt_style(records, prompt_style, str(path), lines)
    return validate_questions(records, f"{path} (prompt_style {prompt_style})", lines)


def prepare_benchmark_questions(spec: dict, out_path: str | os.PathLike) -> int:
    """Materialise the benchmark as validated ``question.jsonl``; returns the question count."""
    if spec["source"] == "local":
        source = spec["path"]
    else:
        from huggingface_hub import hf_hub_download

        from .downloads import HubAccessError, hub_failure_message

        token = os.environ.get("HF_TOKEN") or None
        try:
            source = hf_hub_download(
                repo_id=spec["repo_id"],
                filename=spec["file"],
                revision=spec["revision"],
                repo_type="dataset",
                token=token,
            )
        except Exception as exc:
            message = hub_failure_message(
                exc,
                f"the benchmark file {spec['file']} of",
                spec["repo_id"],
                spec["revision"],
                token is not None,
                repo_type="dataset",
                config_key="benchmark.repo_id / benchmark.revision",
            )
            raise HubAccessError(message) from None
    records = read_benchmark_file(source, spec["prompt_style"])
    write_jsonl(out_path, records)
    categories = pd.Series([r["category"] for r in records]).value_counts()
    log.info("%d questions in %d categories from %s", len(records), len(categories), source)
    return len(records)


def heldout_questions(split_csv: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """The held-out test areas of the construction split, as questions (with their label)."""
    test = split_rows(split_csv, TEST)
    records = [
        {
            "question_id": number,
            "category": row.category,
            "turns": [row.prompt],
            "prompt_style": "base",
            "label": row.label,
            "prompt_id": row.id,
        }
        for number, row in enumerate(test.itertuples(index=False), start=1)
    ]
    validate_questions(records, str(split_csv))
    write_jsonl(out_path, records)
    log.info("%d held-out prompts from %d areas", len(records), test["category"].nunique())
    return len(records)
