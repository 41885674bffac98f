import csv
import hashlib
import logging

import pandas as pd
import pytest

from refusal_ablation.io import InputError
from refusal_ablation.split import (
    CONSTRUCTION,
    SPLIT_COLUMNS,
    TEST,
    policy_area_split,
    read_construction_csv,
    read_split,
    run_split,
    split_rows,
)

REFERENCE_AREAS = [
    "intellectual_property_abuse",
    "illegal_goods_or_services",
    "crime_or_violence_facilitation",
    "extremist_or_terrorist_content",
    "unlicensed_professional_advice",
    "spam_fraud_phishing_or_malware",
    "safety_filter_circumvention",
    "hate_harassment_or_bullying",
    "self_harm_or_personal_harm",
    "privacy_surveillance_or_sensitive_data",
    "misinformation_impersonation_or_defamation",
    "sexual_content",
]
# The construction areas docs/design.md gives for the reference split with seed 2445.
REFERENCE_CONSTRUCTION_AREAS = [
    "extremist_or_terrorist_content",
    "hate_harassment_or_bullying",
    "illegal_goods_or_services",
    "intellectual_property_abuse",
    "safety_filter_circumvention",
    "self_harm_or_personal_harm",
    "sexual_content",
    "spam_fraud_phishing_or_malware",
]


def construction_rows(areas=REFERENCE_AREAS, per_label=2):
    """Rows in the reference file's layout: id, label, category, policy_area, prompt."""
    rows, row_id = [], 1
    for area in areas:
        for label in ("unsafe", "safe"):
            for index in range(per_label):
                rows.append(
                    {
                        "id": str(row_id),
                        "label": label,
                        "category": area,
                        "policy_area": f"{area}, described",
                        "prompt": f"{label} request {index} about {area.replace('_', ' ')}",
                    }
                )
                row_id += 1
    return rows


def write_csv_rows(path, rows, bom=False, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def reference_csv(tmp_path):
    return write_csv_rows(tmp_path / "prompts.csv", construction_rows())


def test_reference_areas_and_seed_give_the_documented_construction_areas(reference_csv):
    frame = read_construction_csv(reference_csv, prompts_per_label_per_area=2)
    split = policy_area_split(frame, construction_areas=8, seed=2445)
    construction = sorted(split.loc[split["split"] == "construction", "category"].unique())
    test = sorted(split.loc[split["split"] == "test", "category"].unique())
    assert construction == REFERENCE_CONSTRUCTION_AREAS
    assert test == sorted(set(REFERENCE_AREAS) - set(REFERENCE_CONSTRUCTION_AREAS))


# What scikit-learn 1.9.1's train_test_split(sorted areas, train_size=k, random_state=seed), the
# reference code's call, keeps as the train (construction) part. Recorded with scikit-learn on
# 2026-12-08, when policy_area_split stopped importing it; the numpy permutation it now uses
# agreed with scikit-learn for every seed 0-299 and every k 1-11 on these 12 areas.
SKLEARN_CONSTRUCTION_AREAS = {
    (0, 8): [
        "crime_or_violence_facilitation",
        "extremist_or_terrorist_content",
        "hate_harassment_or_bullying",
        "illegal_goods_or_services",
        "misinformation_impersonation_or_defamation",
        "safety_filter_circumvention",
        "self_harm_or_personal_harm",
        "sexual_content",
    ],
    (7, 3): ["intellectual_property_abuse", "privacy_surveillance_or_sensitive_data", "sexual_content"],
    (2445, 6): [
        "extremist_or_terrorist_content",
        "hate_harassment_or_bullying",
        "illegal_goods_or_services",
        "safety_filter_circumvention",
        "sexual_content",
        "spam_fraud_phishing_or_malware",
    ],
    (99, 11): sorted(set(REFERENCE_AREAS) - {"misinformation_impersonation_or_defamation"}),
    (1, 1): ["misinformation_impersonation_or_defamation"],
}


@pytest.mark.parametrize("seed,construction_areas", sorted(SKLEARN_CONSTRUCTION_AREAS))
def test_split_reproduces_sklearn_choice_of_areas(reference_csv, seed, construction_areas):
    frame = read_construction_csv(reference_csv, prompts_per_label_per_area=2)
    split = policy_area_split(frame, construction_areas=construction_areas, seed=seed)
    expected = SKLEARN_CONSTRUCTION_AREAS[seed, construction_areas]
    assert sorted(set(split.loc[split["split"] == "construction", "category"])) == expected
    assert set(split.loc[split["split"] == "test", "category"]) == set(REFERENCE_AREAS) - set(expected)


def test_split_table_format(reference_csv):
    frame = read_construction_csv(reference_csv, prompts_per_label_per_area=2)
    split = policy_area_split(frame, construction_areas=8, seed=2445)
    assert list(split.columns) == SPLIT_COLUMNS
    assert split["id"].tolist() == [f"p{i:04d}" for i in range(1, 49)]
    assert split["prompt"].tolist() == [row["prompt"] for row in construction_rows()]
    construction = split["split"] == "construction"
    assert (split.loc[construction, "test_group"] == "construction").all()
    assert (split.loc[~construction, "test_group"] == split.loc[~construction, "label"]).all()
    assert construction.sum() == 8 * 4 and (~construction).sum() == 4 * 4


def test_bom_and_extra_columns_are_accepted(tmp_path):
    rows = construction_rows()
    plain = read_construction_csv(write_csv_rows(tmp_path / "plain.csv", rows), 2)
    with_bom_path = write_csv_rows(tmp_path / "bom.csv", rows, bom=True, columns=["prompt", "label", "category"])
    assert with_bom_path.read_bytes().startswith(b"\xef\xbb\xbf")
    with_bom = read_construction_csv(with_bom_path, 2)
    assert "policy_area" in plain.columns
    pd.testing.assert_frame_equal(plain[["prompt", "label", "category"]], with_bom)


def test_sha256_is_checked(reference_csv):
    digest = hashlib.sha256(reference_csv.read_bytes()).hexdigest()
    assert len(read_construction_csv(reference_csv, 2, expected_sha256=digest)) == 48
    with pytest.raises(InputError, match="SHA-256 mismatch") as err:
        read_construction_csv(reference_csv, 2, expected_sha256="0" * 64)
    assert str(reference_csv) in str(err.value)


def test_missing_column_names_file_and_column(tmp_path):
    path = write_csv_rows(tmp_path / "no_category.csv", construction_rows(), columns=["prompt", "label"])
    with pytest.raises(InputError, match=r"missing required column\(s\) \['category'\]") as err:
        read_construction_csv(path, 2)
    assert str(path) in str(err.value)


def test_bad_label_names_file_line_and_value(tmp_path):
    rows = construction_rows()
    rows[3]["label"] = "Unsafe"
    rows[10]["label"] = "harmless"
    path = write_csv_rows(tmp_path / "labels.csv", rows)
    with pytest.raises(InputError) as err:
        read_construction_csv(path, 2)
    message = str(err.value)
    assert str(path) in message
    # Data row k sits on file line k + 2 (line 1 is the header).
    assert "line 5: 'Unsafe'" in message and "line 12: 'harmless'" in message


def test_empty_prompt_names_file_and_line(tmp_path):
    rows = construction_rows()
    rows[6]["prompt"] = "   "
    path = write_csv_rows(tmp_path / "empty.csv", rows)
    with pytest.raises(InputError, match=r"empty prompt at line\(s\) 8$") as err:
        read_construction_csv(path, 2)
    assert str(path) in str(err.value)


def test_line_numbers_count_multiline_prompts(tmp_path):
    rows = construction_rows()
    rows[0]["prompt"] = "a prompt\nthat spans\nthree lines"
    rows[2]["label"] = "maybe"
    path = write_csv_rows(tmp_path / "multiline.csv", rows)
    with pytest.raises(InputError, match="line 6: 'maybe'"):
        read_construction_csv(path, 2)


def test_wrong_count_per_area_names_file_and_area(tmp_path):
    rows = construction_rows()
    dropped = [r for r in rows if not (r["category"] == "sexual_content" and r["label"] == "safe")][:-1]
    dropped.append(dict(rows[0], prompt="one more unsafe prompt", category="privacy_surveillance_or_sensitive_data"))
    path = write_csv_rows(tmp_path / "counts.csv", dropped)
    with pytest.raises(InputError) as err:
        read_construction_csv(path, 2)
    message = str(err.value)
    assert str(path) in message and "exactly 2 safe and 2 unsafe" in message
    assert "sexual_content: 0 safe, 1 unsafe" in message
    assert "privacy_surveillance_or_sensitive_data: 2 safe, 3 unsafe" in message
    assert "intellectual_property_abuse" not in message


def test_configured_count_must_match(reference_csv):
    with pytest.raises(InputError, match="exactly 20 safe and 20 unsafe"):
        read_construction_csv(reference_csv, 20)


def test_duplicate_prompts(tmp_path, caplog):
    rows = construction_rows()
    rows[5]["prompt"] = rows[1]["prompt"]  # same area, rows 1 unsafe and 5 safe
    path = write_csv_rows(tmp_path / "conflict.csv", rows)
    with pytest.raises(InputError, match=r"different labels or policy areas at lines 3\+7") as err:
        read_construction_csv(path, 2)
    assert str(path) in str(err.value)

    rows = construction_rows()
    rows[1]["prompt"] = rows[0]["prompt"]
    path = write_csv_rows(tmp_path / "repeat.csv", rows)
    with caplog.at_level(logging.WARNING):
        read_construction_csv(path, 2)
    assert "duplicate prompts" in caplog.text and "2+3" in caplog.text


def test_ragged_row_and_empty_file(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("prompt,label,category\nhello,safe,area_a\nextra,safe,area_a,oops\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"at line\(s\) 3") as err:
        read_construction_csv(path, 1)
    assert str(path) in str(err.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty file"):
        read_construction_csv(empty, 1)


def test_construction_area_count_must_leave_test_areas(reference_csv):
    frame = read_construction_csv(reference_csv, 2)
    for bad in (0, 12, 13):
        with pytest.raises(InputError, match="between 1 and 11"):
            policy_area_split(frame, construction_areas=bad, seed=1)


def test_run_split_writes_a_readable_table(tmp_path):
    rows = construction_rows()
    rows[0]["prompt"] = "NA"  # must stay text, not become a missing value
    path = write_csv_rows(tmp_path / "prompts.csv", rows)
    out = tmp_path / "out" / "prompt_split.csv"
    written = run_split(path, out, construction_areas=8, prompts_per_label_per_area=2, seed=2445)
    back = read_split(out)
    assert list(back.columns) == SPLIT_COLUMNS
    assert back["prompt"].iloc[0] == "NA"
    pd.testing.assert_frame_equal(back, written.astype(str))


def test_split_rows_gives_one_part_checked_for_every_reader(tmp_path):
    path = write_csv_rows(tmp_path / "prompts.csv", construction_rows())
    split = run_split(path, tmp_path / "split.csv", construction_areas=8, prompts_per_label_per_area=2, seed=2445)
    for part in (CONSTRUCTION, TEST):
        rows = split_rows(tmp_path / "split.csv", part)
        assert rows["id"].tolist() == split.loc[split["split"] == part, "id"].tolist()
        first = split_rows(tmp_path / "split.csv", part, per_label_per_area=1)
        assert len(first) == 2 * rows["category"].nunique()
    split.loc[split["split"] == TEST, "label"] = "unsafe"
    split.to_csv(tmp_path / "unsafe_only.csv", index=False)
    with pytest.raises(InputError, match="unsafe_only.csv: the test split has no 'safe' prompts"):
        split_rows(tmp_path / "unsafe_only.csv", TEST)
    split.loc[split.index[3], "label"] = "harmless"
    split.to_csv(tmp_path / "bad_label.csv", index=False)
    with pytest.raises(InputError, match=r"bad_label.csv: 'label' must be safe or unsafe; bad line\(s\) \[5\]"):
        split_rows(tmp_path / "bad_label.csv", CONSTRUCTION)


def test_atomic_files_honour_the_umask(tmp_path):
    """Files written through atomic_path get the mode a plain open() gives (not mkstemp's 0600)."""
    import os

    from refusal_ablation.io import atomic_dir, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with atomic_dir(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755


def test_atomic_dir_removes_staging_left_by_a_killed_run(tmp_path):
    from refusal_ablation.io import atomic_dir

    stale = tmp_path / ".edited_reference.abc123.partial"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"\0" * 64)
    other = tmp_path / ".another_model.abc123.partial"
    other.mkdir()
    with atomic_dir(tmp_path / "edited_reference") as staging:
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".another_model.abc123.partial", "edited_reference"]
