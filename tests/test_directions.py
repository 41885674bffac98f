import numpy as np
import pandas as pd
import pytest

from refusal_ablation.directions import (
    FIT_REPORT_COLUMNS,
    FIT_REPORT_LAYER_COLUMNS,
    GENERALIZATION_COLUMNS,
    category_generalization,
    fit_refusal_directions,
    fit_report,
    load_directions,
    read_directions,
    run_fit,
)
from refusal_ablation.io import InputError, save_activations

N_LAYERS, HIDDEN = 3, 24


def unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def planted_states(rng, n_areas=6, per_label=8, area_spread=0.0, noise=0.05, along_safe=1.0):
    """Synthetic last-token states with a known refusal direction per layer.

    Safe prompts sit around a per-layer mean m; unsafe prompts are shifted by 2*r (r a
    unit vector orthogonal to m) plus ``along_safe`` times the unit safe mean, so a
    direction that skips the safe-mean projection misses r. ``area_spread`` adds an
    area-specific shift to the unsafe prompts, so directions from different areas differ.
    Returns states [n, L, H] float32, labels, areas, and r [L, H].
    """
    safe_mean = rng.normal(size=(N_LAYERS, HIDDEN)) + 3.0
    refusal = rng.normal(size=(N_LAYERS, HIDDEN))
    refusal -= np.sum(refusal * unit(safe_mean), axis=1, keepdims=True) * unit(safe_mean)
    refusal = unit(refusal)
    states, labels, areas = [], [], []
    for area_index in range(n_areas):
        area = f"area_{area_index:02d}"
        area_shift = area_spread * rng.normal(size=(N_LAYERS, HIDDEN))
        for label in ("safe", "unsafe"):
            for _ in range(per_label):
                state = safe_mean + noise * rng.normal(size=(N_LAYERS, HIDDEN))
                if label == "unsafe":
                    state = state + 2.0 * refusal + along_safe * unit(safe_mean) + area_shift
                states.append(state)
                labels.append(label)
                areas.append(area)
    return np.array(states, dtype=np.float32), np.array(labels), np.array(areas), refusal


def test_planted_direction_is_recovered():
    states, labels, _, refusal = planted_states(np.random.default_rng(0))
    directions, safe_mean, unsafe_mean = fit_refusal_directions(states, labels)
    assert directions.shape == (N_LAYERS, HIDDEN) and directions.dtype == np.float32
    assert safe_mean.dtype == np.float32 and unsafe_mean.shape == (N_LAYERS, HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, atol=1e-6)
    assert np.all(np.sum(directions * refusal, axis=1) > 0.99)
    safe_axis = unit(states[labels == "safe"].astype(np.float64).mean(axis=0))
    np.testing.assert_allclose(np.sum(directions * safe_axis, axis=1), 0.0, atol=1e-6)
    # The plain mean difference would point only ~0.89 along r: the projection matters.
    raw = unit(unsafe_mean.astype(np.float64) - safe_mean)
    assert np.all(np.sum(raw * refusal, axis=1) < 0.95)


def test_direction_needs_both_labels_and_a_difference():
    states, labels, _, _ = planted_states(np.random.default_rng(1))
    with pytest.raises(ValueError, match="need unsafe prompts"):
        fit_refusal_directions(states[labels == "safe"], labels[labels == "safe"])
    with pytest.raises(ValueError, match="safe or unsafe"):
        fit_refusal_directions(states, np.where(labels == "safe", "benign", labels))
    same = np.repeat(states[:1], len(states), axis=0)
    with pytest.raises(ValueError, match=r"refusal direction .* zero at layer\(s\) \[0, 1, 2\]"):
        fit_refusal_directions(same, labels)


def expected_layer_cosines(states, labels, areas, budgets, repeats, seed):
    """The procedure of docs/design.md ("Direction per layer"), spelled out with row-wise fits."""
    area_names = np.array(sorted(set(areas)))
    rng = np.random.default_rng(seed)
    cosines = np.empty((len(budgets), repeats, states.shape[1]))
    for b_index, budget in enumerate(budgets):
        for repeat in range(repeats):
            used = rng.choice(area_names, size=budget, replace=False)
            used_rows = np.isin(areas, used)
            used_direction = fit_refusal_directions(states[used_rows], labels[used_rows])[0]
            held_direction = fit_refusal_directions(states[~used_rows], labels[~used_rows])[0]
            cosines[b_index, repeat] = np.sum(used_direction.astype(np.float64) * held_direction, axis=1)
    return cosines


def test_generalization_follows_the_documented_rng_order():
    states, labels, areas, _ = planted_states(np.random.default_rng(2), n_areas=7, area_spread=0.6)
    budgets, repeats, seed = [2, 5, 3], 4, 2445
    table, cosines = category_generalization(states, labels, areas, budgets, repeats, seed, return_layer_cosines=True)
    expected = expected_layer_cosines(states, labels, areas, budgets, repeats, seed)
    np.testing.assert_allclose(cosines, expected, atol=1e-5)
    for b_index in range(len(budgets)):
        pooled = expected[b_index].ravel()
        assert table["median_layer_cosine_to_heldout"].iloc[b_index] == pytest.approx(np.median(pooled), abs=1e-5)
        assert table["p10_layer_cosine_to_heldout"].iloc[b_index] == pytest.approx(np.quantile(pooled, 0.1), abs=1e-5)
    # Area-specific shifts make the draws matter: another order gives other numbers.
    reordered = expected_layer_cosines(states, labels, areas, budgets[::-1], repeats, seed)[::-1]
    assert not np.allclose(cosines, reordered, atol=1e-3)


def test_generalization_table_shape_columns_and_seed():
    states, labels, areas, _ = planted_states(np.random.default_rng(3), n_areas=6, per_label=3, area_spread=0.5)
    table = category_generalization(states, labels, areas, [2, 4], repeats=3, seed=11)
    assert list(table.columns) == GENERALIZATION_COLUMNS
    assert table["used_policy_areas"].tolist() == [2, 4]
    assert table["held_out_policy_areas"].tolist() == [4, 2]
    assert table["used_prompts"].tolist() == [12, 24]
    assert table["held_out_prompts"].tolist() == [24, 12]
    assert (table["repeats"] == 3).all()
    assert (table["cosine_reference"] == "held_out_policy_area_direction").all()
    assert (table["p10_layer_cosine_to_heldout"] <= table["median_layer_cosine_to_heldout"]).all()
    again = category_generalization(states, labels, areas, [2, 4], repeats=3, seed=11)
    pd.testing.assert_frame_equal(table, again)
    other = category_generalization(states, labels, areas, [2, 4], repeats=3, seed=12)
    assert not np.allclose(table["median_layer_cosine_to_heldout"], other["median_layer_cosine_to_heldout"])


def test_shared_direction_is_stable_across_areas():
    states, labels, areas, _ = planted_states(np.random.default_rng(4), n_areas=6)
    table = category_generalization(states, labels, areas, [1, 3, 5], repeats=2, seed=0)
    assert (table["p10_layer_cosine_to_heldout"] > 0.99).all()


def test_generalization_rejects_impossible_budgets():
    states, labels, areas, _ = planted_states(np.random.default_rng(5), n_areas=4, per_label=2)
    with pytest.raises(ValueError, match=r"between 1 and 3 .* got \[4\]"):
        category_generalization(states, labels, areas, [2, 4], repeats=1, seed=0)


def test_fit_report_per_layer():
    states, labels, areas, _ = planted_states(np.random.default_rng(6), n_areas=5, along_safe=1.0)
    directions = fit_refusal_directions(states, labels)[0]
    generalization, cosines = category_generalization(
        states, labels, areas, [2, 4], repeats=2, seed=1, return_layer_cosines=True
    )
    report = fit_report(states, labels, areas, directions, generalization, 2, cosines)
    assert list(report.columns) == FIT_REPORT_COLUMNS + FIT_REPORT_LAYER_COLUMNS
    assert report["layer"].tolist() == list(range(N_LAYERS))
    assert (report["construction_prompts"] == len(labels)).all()
    assert (report["construction_policy_areas"] == 5).all()
    # No budget equals the 5 areas here, so the reference summary is left empty.
    assert report["median_layer_cosine_to_heldout"].isna().all()
    # Unsafe prompts sit 2*r + 1*unit(m) from the safe ones.
    np.testing.assert_allclose(report["mean_difference_norm"], np.sqrt(5.0), rtol=0.02)
    np.testing.assert_allclose(report["orthogonal_difference_norm"], 2.0, rtol=0.02)
    # The direction is orthogonal to the safe mean, so safe prompts project to ~0 on average.
    np.testing.assert_allclose(report["safe_projection_mean"], 0.0, atol=1e-4)
    np.testing.assert_allclose(report["unsafe_projection_mean"], report["orthogonal_difference_norm"], rtol=1e-4)
    assert (report["projection_auc"] == 1.0).all()
    assert (report["projection_separation_d"] > 10).all()

    four = np.isin(areas, sorted(set(areas))[:4])
    report4 = fit_report(states[four], labels[four], areas[four], directions, generalization, 2, cosines)
    assert (report4["median_layer_cosine_to_heldout"] == generalization["median_layer_cosine_to_heldout"].iloc[1]).all()
    np.testing.assert_allclose(report4["layer_median_cosine_to_heldout"], np.median(cosines[1], axis=0))


def write_split(path, labels, areas, construction_areas):
    split = pd.DataFrame(
        {
            "id": [f"p{i:04d}" for i in range(1, len(labels) + 1)],
            "prompt": [f"prompt {i}" for i in range(len(labels))],
            "label": labels,
            "category": areas,
        }
    )
    in_construction = split["category"].isin(construction_areas)
    split["split"] = np.where(in_construction, "construction", "test")
    split["test_group"] = np.where(in_construction, "construction", split["label"])
    split.to_csv(path, index=False)
    return split


def fit_inputs(tmp_path, rng, n_areas=6, construction=4):
    states, labels, areas, refusal = planted_states(rng, n_areas=n_areas, per_label=4, area_spread=0.3)
    construction_areas = sorted(set(areas))[:construction]
    split = write_split(tmp_path / "prompt_split.csv", labels, areas, construction_areas)
    save_activations(tmp_path / "construction.npz", split["id"].tolist(), states)
    return states, split, refusal


def test_run_fit_uses_construction_rows_only(tmp_path):
    states, split, _ = fit_inputs(tmp_path, np.random.default_rng(7))
    model = {"name": "tiny", "repo_id": "org/tiny-model", "revision": "abc123"}
    outputs = [tmp_path / "out" / name for name in ("dirs.npz", "fit.csv", "gen.csv")]
    run_fit(
        tmp_path / "construction.npz",
        tmp_path / "prompt_split.csv",
        *outputs,
        seed=2445,
        generalization={"budgets": [2, 4], "repeats": 3},
        model=model,
    )

    arrays = load_directions(outputs[0])
    construction = (split["split"] == "construction").to_numpy()
    expected = fit_refusal_directions(states[construction], split["label"].to_numpy()[construction])
    np.testing.assert_array_equal(arrays["directions"], expected[0])
    np.testing.assert_array_equal(arrays["safe_mean"], expected[1])
    np.testing.assert_array_equal(arrays["unsafe_mean"], expected[2])
    assert arrays["directions"].dtype == np.float32
    assert arrays["prompt_ids"].tolist() == split.loc[construction, "id"].tolist()
    assert arrays["construction_areas"].tolist() == ["area_00", "area_01", "area_02", "area_03"]
    assert str(arrays["model_name"]) == "org/tiny-model" and str(arrays["model_revision"]) == "abc123"
    assert arrays["generalization_layer_cosines"].shape == (2, 3, N_LAYERS)

    generalization = pd.read_csv(outputs[2])
    assert list(generalization.columns) == GENERALIZATION_COLUMNS
    # The generalization check covers every area in the split, test areas included.
    assert generalization["held_out_policy_areas"].tolist() == [4, 2]
    report = pd.read_csv(outputs[1])
    assert list(report.columns) == FIT_REPORT_COLUMNS + FIT_REPORT_LAYER_COLUMNS
    assert (report["construction_prompts"] == construction.sum()).all()
    assert (report["median_layer_cosine_to_heldout"] == generalization["median_layer_cosine_to_heldout"].iloc[1]).all()

    # Changing only test-area activations leaves the directions untouched.
    shifted = states.copy()
    shifted[~construction] += 5.0
    save_activations(tmp_path / "construction.npz", split["id"].tolist(), shifted)
    run_fit(
        tmp_path / "construction.npz",
        tmp_path / "prompt_split.csv",
        *outputs,
        seed=2445,
        generalization={"budgets": [2, 4], "repeats": 3},
        model=model,
    )
    np.testing.assert_array_equal(load_directions(outputs[0])["directions"], expected[0])


def test_run_fit_names_missing_activations(tmp_path):
    states, split, _ = fit_inputs(tmp_path, np.random.default_rng(8))
    save_activations(tmp_path / "construction.npz", split["id"].tolist()[:-1], states[:-1])
    outputs = [tmp_path / name for name in ("dirs.npz", "fit.csv", "gen.csv")]
    with pytest.raises(ValueError, match=r"construction.npz: no activations for prompt id\(s\) \['p0048'\]"):
        run_fit(
            tmp_path / "construction.npz",
            tmp_path / "prompt_split.csv",
            *outputs,
            seed=1,
            generalization={"budgets": [2], "repeats": 1},
            model={"name": "tiny"},
        )


def test_the_directions_file_is_checked_once_for_every_reader(tmp_path):
    good = unit(np.random.default_rng(0).normal(size=(N_LAYERS, HIDDEN))).astype(np.float64)
    np.savez(tmp_path / "good.npz", directions=good, safe_mean=np.zeros((N_LAYERS, HIDDEN)))
    assert read_directions(tmp_path / "good.npz").dtype == np.float32
    assert set(load_directions(tmp_path / "good.npz")) == {"directions", "safe_mean"}
    cases = {
        "missing": ({"safe_mean": good}, r"no 'directions' array \(has \['safe_mean'\]\)"),
        "flat": ({"directions": good[0]}, r"must be \[layers, hidden\]"),
        "zero": ({"directions": np.vstack([good[:2], np.zeros((1, HIDDEN))])}, r"rows \[2\] are zero or not finite"),
        "nan": ({"directions": np.vstack([good[:2], np.full((1, HIDDEN), np.nan)])}, "zero or not finite"),
        "long": ({"directions": 2 * good}, r"layer\(s\) \[0, 1, 2\] are not unit length"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        for reader in (load_directions, read_directions):
            with pytest.raises(InputError, match=message):
                reader(tmp_path / f"{name}.npz")
