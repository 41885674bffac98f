"""File formats shared by every stage: questions, answers, judgments, activations.

Every reader validates what it reads and raises ``InputError`` naming the file and the
offending line, row or field. Every writer writes to a temporary file beside the target
and renames it into place, so an interrupted job never leaves a half-written output that
looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

ANSWER_TABLE_COLUMNS = ["question_id", "category", "condition", "answer_tokens", "hit_token_limit"]
JUDGMENT_COLUMNS = [
    "question_id",
    "category",
    "condition",
    "score",
    "judgment",
    "judge_model",
    "judge_prompt",
]


class InputError(ValueError):
    """Bad input data; the message names the file and the offending row or field."""


# ---------------------------------------------------------------- generic helpers


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp makes the file owner-only; give it the mode a plain open() would (0666 & ~umask)
    tmp.chmod(0o666 & ~_current_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a fresh directory beside ``path``; it replaces ``path`` only on success.

    A checkpoint directory is either the complete new one or what was there before, never
    half written; the staging directory is removed if the block fails. Staging directories
    of this target left by a killed process (no ``finally`` ran) are removed first: only one
    job at a time writes a given output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leftovers = list(path.parent.glob(f".{path.name}.*{suffix}"))
    if path.exists():  # an old copy whose swap was cut short is only stale once a new one is in place
        leftovers += path.parent.glob(f".{path.name}.old-*")
    for stale in leftovers:
        if stale.is_dir():
            logging.getLogger(__name__).warning("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it owner-only; a model dir is shared like any output
    try:
        yield staging
        if path.exists():
            # a directory cannot be renamed onto a non-empty one: swap, then drop the old copy
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # a hard link costs no space: checkpoints of several GB are not duplicated
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def materialise_dir(source: Path, target: Path) -> int:
    """Copy (hard-link where possible) every non-hidden file of ``source`` into ``target``."""
    count = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        _link_or_copy(path.resolve(), target / rel)
        count += 1
    return count


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise InputError(f"{path}: SHA-256 mismatch: expected {expected.lower()}, got {actual}")


def read_jsonl_lines(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """The JSON objects of a jsonl file and the 1-based file line of each (blank lines skipped)."""
    records, lines = [], []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path}, line {lineno}: expected a JSON object")
                records.append(record)
                lines.append(lineno)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (byte {exc.start}): {exc.reason}") from None
    return records, lines


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return read_jsonl_lines(path)[0]


def where_in_file(source: str, lines: list[int] | None, index: int) -> str:
    """'<file>, line L' when the file lines are known, else '<source>, record N' (1-based)."""
    if lines is not None:
        return f"{source}, line {lines[index - 1]}"
    return f"{source}, record {index}"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


# ---------------------------------------------------------------- questions


def validate_questions(records: list[dict], source: str, lines: list[int] | None = None) -> list[dict]:
    """Check SORRY-Bench question records: ids 1..N in file order, category, one turn.

    ``lines`` (from ``read_jsonl_lines``) lets messages name the file line of a record.
    """
    if not records:
        raise InputError(f"{source}: no questions (the file is empty)")
    for index, record in enumerate(records, start=1):
        where = where_in_file(source, lines, index)
        for field in ("question_id", "category", "turns"):
            if field not in record:
                raise InputError(f"{where}: missing field '{field}'")
        qid = record["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise InputError(f"{where}: 'question_id' must be an integer, got {qid!r}")
        if qid != index:
            raise InputError(
                f"{where}: question ids must be 1..N in file order (the official judge pairs "
                f"answers with questions[question_id - 1]); expected {index}, got {qid}"
            )
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise InputError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        if not isinstance(record["category"], str) or not record["category"].strip():
            raise InputError(f"{where}: 'category' must be a non-empty string")
    return records


def read_questions(path: str | os.PathLike) -> list[dict]:
    records, lines = read_jsonl_lines(path)
    return validate_questions(records, str(path), lines)


# ---------------------------------------------------------------- answers


def answer_id(model_id: str, question_id: int, text: str) -> str:
    """Deterministic answer id, so that the same answers give byte-identical files."""
    digest = hashlib.sha256(f"{model_id}\0{question_id}\0{text}".encode()).hexdigest()
    return digest[:22]


def answer_record(question_id: int, model_id: str, text: str) -> dict:
    """One answer in the FastChat / SORRY-Bench ``model_answer`` format.

    ``tstamp`` is fixed at 0.0: wall-clock times live in the logs and benchmarks, and a
    fixed value keeps answer files reproducible byte for byte (sharded or not).
    """
    return {
        "question_id": int(question_id),
        "answer_id": answer_id(model_id, question_id, text),
        "model_id": model_id,
        "choices": [{"index": 0, "turns": [text]}],
        "tstamp": 0.0,
    }


def answer_text(record: dict) -> str:
    return record["choices"][0]["turns"][0]


def read_answers(path: str | os.PathLike) -> list[dict]:
    records, lines = read_jsonl_lines(path)
    seen: set[int] = set()
    for index, record in enumerate(records, start=1):
        where = where_in_file(str(path), lines, index)
        for field in ("question_id", "model_id", "choices"):
            if field not in record:
                raise InputError(f"{where}: missing field '{field}'")
        try:
            text = answer_text(record)
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{where}: 'choices' must be [{{'index': 0, 'turns': [text]}}]") from None
        if not isinstance(text, str):
            raise InputError(f"{where}: answer text must be a string")
        if record["question_id"] in seen:
            raise InputError(f"{where}: question_id {record['question_id']} answered twice")
        seen.add(record["question_id"])
    return records


def read_answer_table(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in ANSWER_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    return frame


# ---------------------------------------------------------------- judgments


def read_judgments(path: str | os.PathLike) -> pd.DataFrame:
    """Read a judgments table; scores must be 0, 1 or missing, one row per question."""
    frame = pd.read_csv(path, dtype={"category": str})
    missing = [c for c in ("question_id", "category", "condition", "score") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    bad = frame[~frame["score"].isna() & ~frame["score"].isin([0, 1])]
    if len(bad):
        rows = ", ".join(str(i + 2) for i in bad.index[:10])
        raise InputError(f"{path}: scores must be 0, 1 or empty (unparsable); bad rows (file lines): {rows}")
    dup = frame[frame.duplicated(["condition", "question_id"], keep=False)]
    if len(dup):
        ids = sorted(set(dup["question_id"].tolist()))[:10]
        raise InputError(f"{path}: question(s) judged more than once: {ids}")
    return frame


# ---------------------------------------------------------------- activations


def save_activations(path: str | os.PathLike, ids: list[str], states: np.ndarray) -> None:
    """Write last-token hidden states [n, layers, hidden] as float32, one array per prompt id."""
    if len(ids) != len(states):
        raise ValueError(f"{len(ids)} ids for {len(states)} activation rows")
    arrays = {str(i): np.asarray(s, dtype=np.float32) for i, s in zip(ids, states)}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def load_activations(path: str | os.PathLike, ids: Iterable[str]) -> np.ndarray:
    """Read the states of ``ids`` (in that order) as a float32 array [n, layers, hidden]."""
    with np.load(path) as data:
        ids = [str(i) for i in ids]
        missing = [i for i in ids if i not in data.files]
        if missing:
            raise InputError(f"{path}: no activations for prompt id(s) {missing[:10]}")
        return np.stack([data[i] for i in ids]).astype(np.float32, copy=False)
