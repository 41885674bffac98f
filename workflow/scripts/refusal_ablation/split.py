"""The construction data and its policy-area-disjoint split.

The construction CSV holds one prompt per row with ``prompt,label,category`` (extra columns
are allowed and ignored); ``category`` is the policy area. The split picks whole policy
areas for direction construction and keeps the others as held-out test areas, so the
directions never see a test area's prompts.
"""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pandas as pd

from refusal_ablation.io import InputError, verify_sha256, write_csv

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "label", "category")
LABELS = ("safe", "unsafe")
SPLIT_COLUMNS = ["id", "prompt", "label", "category", "split", "test_group"]
CONSTRUCTION = "construction"
TEST = "test"


def first_per_area_and_label(rows: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The first ``n`` rows of each (category, label) group, in file order; all rows when ``n`` is None."""
    if n is None:
        return rows
    return rows.groupby(["category", "label"], sort=False).head(int(n)).reset_index(drop=True)


def _lines(numbers, limit: int = 20) -> str:
    numbers = list(numbers)
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (f" (and {len(numbers) - limit} more)" if len(numbers) > limit else "")


def _read_records(path: str | os.PathLike) -> tuple[list[str], list[int], list[list[str]]]:
    """Header, the 1-based file line where each record starts, and the records' fields."""
    starts, records = [], []
    try:
        # utf-8-sig drops a leading byte-order mark and reads plain UTF-8 unchanged.
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file, expected a header with columns {list(REQUIRED_COLUMNS)}")
            previous_end = reader.line_num
            for fields in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                starts.append(start)
                records.append(fields)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (byte {exc.start}): {exc.reason}") from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from None
    return [h.strip() for h in header], starts, records


def read_construction_csv(
    path: str | os.PathLike,
    prompts_per_label_per_area: int,
    expected_sha256: str | None = None,
) -> pd.DataFrame:
    """Read and validate the construction CSV.

    Returns its rows in file order with columns ``prompt, label, category`` plus any extra
    columns; the index ``line`` is the 1-based file line where each row starts. Prompts and
    categories are stripped of surrounding whitespace; labels must be exactly safe/unsafe.
    Raises ``InputError`` naming the file and the offending lines or areas.
    """
    if expected_sha256:
        verify_sha256(path, expected_sha256)
    header, starts, records = _read_records(path)

    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: missing required column(s) {missing}; header has {header}")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise InputError(f"{path}: column name(s) {repeated} appear more than once in the header")
    ragged = [line for line, fields in zip(starts, records) if len(fields) != len(header)]
    if ragged:
        raise InputError(
            f"{path}: rows with a field count other than the header's {len(header)}, at line(s) {_lines(ragged)}"
        )
    if not records:
        raise InputError(f"{path}: no prompt rows below the header")

    frame = pd.DataFrame(records, columns=header, index=pd.Index(starts, name="line"))
    frame["prompt"] = frame["prompt"].str.strip()
    frame["category"] = frame["category"].str.strip()

    bad_label = frame[~frame["label"].isin(LABELS)]
    if len(bad_label):
        shown = "; ".join(f"line {line}: {value!r}" for line, value in bad_label["label"].head(20).items())
        raise InputError(f"{path}: labels must be exactly 'safe' or 'unsafe'; {len(bad_label)} bad row(s): {shown}")
    empty_prompt = frame.index[frame["prompt"] == ""]
    if len(empty_prompt):
        raise InputError(f"{path}: empty prompt at line(s) {_lines(empty_prompt)}")
    empty_category = frame.index[frame["category"] == ""]
    if len(empty_category):
        raise InputError(f"{path}: empty category (policy area) at line(s) {_lines(empty_category)}")

    _check_duplicates(path, frame)
    _check_counts(path, frame, prompts_per_label_per_area)
    return frame


def _check_duplicates(path, frame: pd.DataFrame) -> None:
    """A prompt given two labels or two areas is an error; a plain repeat is logged."""
    groups = frame[frame.duplicated("prompt", keep=False)].groupby("prompt", sort=False)
    conflicting, repeated = [], []
    for _, rows in groups:
        lines = "+".join(str(line) for line in rows.index)
        if rows["label"].nunique() > 1 or rows["category"].nunique() > 1:
            conflicting.append(lines)
        else:
            repeated.append(lines)
    if conflicting:
        raise InputError(
            f"{path}: the same prompt appears with different labels or policy areas at lines "
            f"{', '.join(conflicting[:20])}"
        )
    if repeated:
        log.warning("%s: duplicate prompts (same label and area) at lines %s", path, ", ".join(repeated[:20]))


def _check_counts(path, frame: pd.DataFrame, prompts_per_label_per_area: int) -> None:
    counts = frame.groupby(["category", "label"]).size().unstack("label", fill_value=0)
    counts = counts.reindex(columns=list(LABELS), fill_value=0)
    wrong = counts[(counts != prompts_per_label_per_area).any(axis=1)]
    if len(wrong):
        shown = "; ".join(f"{area}: {row['safe']} safe, {row['unsafe']} unsafe" for area, row in wrong.iterrows())
        raise InputError(
            f"{path}: every policy area needs exactly {prompts_per_label_per_area} safe and "
            f"{prompts_per_label_per_area} unsafe prompts; wrong counts in area(s): {shown}"
        )


def policy_area_split(frame: pd.DataFrame, construction_areas: int, seed: int) -> pd.DataFrame:
    """Assign whole policy areas to construction or test.

    The choice is the one the reference code makes with scikit-learn's
    ``train_test_split(sorted areas, train_size=construction_areas, random_state=seed)``:
    a ``numpy.random.RandomState(seed)`` permutation of the sorted areas, whose first
    ``n_areas - construction_areas`` entries are the test areas and the rest the construction
    areas. It is computed here with numpy alone, so that the Snakefile (which reads the split
    when it builds the DAG) needs no scikit-learn and starts about 2 s sooner; it agreed with
    scikit-learn 1.9.1 for every seed 0-299 and size 1-11 of the 12 reference areas, and
    tests/test_split.py keeps scikit-learn's answers for five of them. Rows keep their order and
    get ids ``p0001, p0002, ...``. ``test_group`` is ``construction`` for construction rows and the label for test rows.
    """
    areas = sorted(frame["category"].unique())
    if not 0 < construction_areas < len(areas):
        raise InputError(
            f"construction_areas must be between 1 and {len(areas) - 1} (the data has "
            f"{len(areas)} policy areas), got {construction_areas}"
        )
    permutation = np.random.RandomState(seed).permutation(len(areas))
    n_test = len(areas) - construction_areas
    construction = {areas[i] for i in permutation[n_test:]}

    width = max(4, len(str(len(frame))))
    split = pd.DataFrame(
        {
            "id": [f"p{i:0{width}d}" for i in range(1, len(frame) + 1)],
            "prompt": frame["prompt"].to_numpy(),
            "label": frame["label"].to_numpy(),
            "category": frame["category"].to_numpy(),
        }
    )
    in_construction = split["category"].isin(construction)
    split["split"] = in_construction.map({True: CONSTRUCTION, False: TEST})
    split["test_group"] = split["label"].where(~in_construction, CONSTRUCTION)
    return split[SPLIT_COLUMNS]


def construction_area_names(split: pd.DataFrame) -> list[str]:
    return sorted(split.loc[split["split"] == CONSTRUCTION, "category"].unique())


def read_split(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``prompt_split.csv`` as strings (a prompt such as 'NA' stays text), validated."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}")
    bad = frame.index[~frame["split"].isin([CONSTRUCTION, TEST])]
    if len(bad):
        raise InputError(f"{path}: 'split' must be construction or test; bad line(s) {_lines(bad + 2)}")
    bad_label = frame.index[~frame["label"].isin(LABELS)]
    if len(bad_label):
        raise InputError(f"{path}: 'label' must be safe or unsafe; bad line(s) {[int(i) + 2 for i in bad_label[:20]]}")
    empty = frame.index[frame["prompt"].str.strip() == ""]
    if len(empty):
        raise InputError(f"{path}: empty prompt in file line(s) {[int(i) + 2 for i in empty[:10]]}")
    if frame["id"].duplicated().any():
        dup = frame.index[frame["id"].duplicated(keep=False)]
        raise InputError(f"{path}: duplicate prompt ids at line(s) {_lines(dup + 2)}")
    return frame


def split_rows(split_csv: str | os.PathLike, part: str, per_label_per_area: int | None = None) -> pd.DataFrame:
    """The rows of one part of the split file, ``construction`` or ``test`` (held out), in
    file order and read through ``read_split``; with safe and unsafe prompts both present.
    ``per_label_per_area`` keeps the first n of each area and label (all when None)."""
    if part not in (CONSTRUCTION, TEST):
        raise ValueError(f"split part {part!r} is not {CONSTRUCTION!r} or {TEST!r}")
    frame = read_split(split_csv)
    rows = frame[frame["split"] == part]
    if rows.empty:
        raise InputError(f"{split_csv}: no rows with split == {part!r}")
    for label in LABELS:
        if not (rows["label"] == label).any():
            raise InputError(f"{split_csv}: the {part} split has no {label!r} prompts")
    return first_per_area_and_label(rows.reset_index(drop=True), per_label_per_area)


def run_split(
    csv_path: str | os.PathLike,
    out_split: str | os.PathLike,
    construction_areas: int,
    prompts_per_label_per_area: int,
    seed: int,
    expected_sha256: str | None = None,
) -> pd.DataFrame:
    frame = read_construction_csv(csv_path, prompts_per_label_per_area, expected_sha256)
    split = policy_area_split(frame, construction_areas, seed)
    areas = construction_area_names(split)
    held_out = sorted(set(split["category"]) - set(areas))
    log.info("%s: %d prompts in %d policy areas", csv_path, len(split), len(areas) + len(held_out))
    log.info("construction areas (%d): %s", len(areas), ", ".join(areas))
    log.info("held-out test areas (%d): %s", len(held_out), ", ".join(held_out))
    write_csv(out_split, split)
    return split
