"""Per-layer refusal directions, their stability across policy areas, and the fit report.

A refusal direction of decoder layer l is the difference of the mean last-prompt-token
states of unsafe and safe prompts, with its component along the normalised safe mean
removed, scaled to unit length. Means are taken in float64; directions are stored float32.

Tables written here use the columns of the reference artifacts
(``category_generalization_table.csv``, ``direction_fit_report.csv`` of the reference
implementation), so a run can be compared with the published one column by column.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from refusal_ablation.io import InputError, atomic_path, load_activations, write_csv
from refusal_ablation.split import CONSTRUCTION, read_split

log = logging.getLogger(__name__)

SPLIT_STYLE = "policy_area_disjoint"
COSINE_REFERENCE = "held_out_policy_area_direction"
P10_QUANTILE = 0.10
GENERALIZATION_COLUMNS = [
    "used_policy_areas",
    "held_out_policy_areas",
    "used_prompts",
    "held_out_prompts",
    "repeats",
    "cosine_reference",
    "median_layer_cosine_to_heldout",
    "p10_layer_cosine_to_heldout",
]
FIT_REPORT_COLUMNS = [
    "split_style",
    "construction_prompts",
    "construction_safe_prompts",
    "construction_unsafe_prompts",
    "construction_policy_areas",
    "category_generalization_repeats",
    "category_generalization_reference",
    "median_layer_cosine_to_heldout",
    "p10_layer_cosine_to_heldout",
]
# Our per-layer additions, after the reference columns.
FIT_REPORT_LAYER_COLUMNS = [
    "layer",
    "mean_difference_norm",
    "safe_mean_norm",
    "mean_difference_cosine_to_safe_mean",
    "orthogonal_difference_norm",
    "unsafe_projection_mean",
    "unsafe_projection_sd",
    "safe_projection_mean",
    "safe_projection_sd",
    "projection_separation_d",
    "projection_auc",
    "layer_median_cosine_to_heldout",
]


def _check_states(states: np.ndarray, labels: np.ndarray) -> None:
    if states.ndim != 3:
        raise ValueError(f"activations must be [prompts, layers, hidden], got shape {states.shape}")
    if len(states) != len(labels):
        raise ValueError(f"{len(states)} activation rows for {len(labels)} labels")
    unknown = sorted(set(labels.tolist()) - {"safe", "unsafe"})
    if unknown:
        raise ValueError(f"labels must be safe or unsafe, got {unknown}")
    for label in ("safe", "unsafe"):
        if not np.any(labels == label):
            raise ValueError(f"refusal directions need {label} prompts; none given")


def _unit_rows(rows: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise ValueError(f"{what} is zero at layer(s) {zero.tolist()}; cannot normalise it")
    return rows / norms


def _direction_from_means(safe_mean: np.ndarray, unsafe_mean: np.ndarray) -> np.ndarray:
    """Unit directions [L, H] (float64) from the per-layer class means."""
    difference = unsafe_mean - safe_mean
    safe_axis = _unit_rows(safe_mean, "safe activation mean")
    difference = difference - np.sum(difference * safe_axis, axis=1, keepdims=True) * safe_axis
    return _unit_rows(difference, "refusal direction (mean difference off the safe mean)")


def fit_refusal_directions(states, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer refusal directions from states [n, L, H] and safe/unsafe labels.

    Returns ``(directions, safe_mean, unsafe_mean)``, each float32 [L, H]; every direction
    row has unit length and no component along its layer's safe mean.
    """
    states = np.asarray(states)
    labels = np.asarray(labels, dtype=str)
    _check_states(states, labels)
    safe_mean = states[labels == "safe"].mean(axis=0, dtype=np.float64)
    unsafe_mean = states[labels == "unsafe"].mean(axis=0, dtype=np.float64)
    directions = _direction_from_means(safe_mean, unsafe_mean)
    return directions.astype(np.float32), safe_mean.astype(np.float32), unsafe_mean.astype(np.float32)


def category_generalization(
    states,
    labels,
    areas,
    budgets: Sequence[int],
    repeats: int,
    seed: int,
    return_layer_cosines: bool = False,
):
    """How well a direction fit on a few policy areas matches one fit on the others.

    For each budget (in the given order) and each repeat, ``budget`` areas are drawn with
    ``numpy.random.default_rng(seed).choice(sorted_areas, size=budget, replace=False)``
    (one generator for the whole table); a direction is fit on those areas and one on all
    other areas, and their per-layer cosines are pooled over layers x repeats into a median
    and a 10th percentile. With ``return_layer_cosines`` also returns the cosines as an
    array [budgets, repeats, layers].
    """
    states = np.asarray(states)
    labels = np.asarray(labels, dtype=str)
    areas = np.asarray(areas, dtype=str)
    _check_states(states, labels)
    if len(areas) != len(labels):
        raise ValueError(f"{len(areas)} policy areas for {len(labels)} labels")
    area_names = np.array(sorted(set(areas.tolist())))
    budgets = [int(b) for b in budgets]
    bad = [b for b in budgets if not 0 < b < len(area_names)]
    if bad:
        raise ValueError(
            f"generalization budgets must be between 1 and {len(area_names) - 1} "
            f"(the data has {len(area_names)} policy areas), got {bad}"
        )
    if int(repeats) < 1:
        raise ValueError(f"generalization repeats must be at least 1, got {repeats}")
    repeats = int(repeats)

    # Per-area sums make every subset's class means exact and cheap to combine.
    n_areas, n_layers, hidden = len(area_names), states.shape[1], states.shape[2]
    sums = {label: np.zeros((n_areas, n_layers, hidden)) for label in ("safe", "unsafe")}
    counts = {label: np.zeros(n_areas, dtype=np.int64) for label in ("safe", "unsafe")}
    for index, area in enumerate(area_names):
        for label in ("safe", "unsafe"):
            rows = states[(areas == area) & (labels == label)]
            sums[label][index] = rows.sum(axis=0, dtype=np.float64)
            counts[label][index] = len(rows)

    def direction_for(selected: np.ndarray) -> np.ndarray:
        n_safe, n_unsafe = counts["safe"][selected].sum(), counts["unsafe"][selected].sum()
        if n_safe == 0 or n_unsafe == 0:
            chosen = area_names[selected].tolist()
            raise ValueError(f"policy areas {chosen} lack safe or unsafe prompts; no direction")
        safe_mean = sums["safe"][selected].sum(axis=0) / n_safe
        unsafe_mean = sums["unsafe"][selected].sum(axis=0) / n_unsafe
        return _direction_from_means(safe_mean, unsafe_mean)

    prompts_per_area = counts["safe"] + counts["unsafe"]
    rng = np.random.default_rng(seed)
    layer_cosines = np.empty((len(budgets), repeats, n_layers))
    rows = []
    for b_index, budget in enumerate(budgets):
        used_prompts, held_out_prompts = [], []
        for repeat in range(repeats):
            used = rng.choice(area_names, size=budget, replace=False)
            used_mask = np.isin(area_names, used)
            used_direction = direction_for(used_mask)
            held_out_direction = direction_for(~used_mask)
            layer_cosines[b_index, repeat] = np.sum(used_direction * held_out_direction, axis=1)
            used_prompts.append(prompts_per_area[used_mask].sum())
            held_out_prompts.append(prompts_per_area[~used_mask].sum())
        pooled = layer_cosines[b_index].ravel()
        rows.append(
            {
                "used_policy_areas": budget,
                "held_out_policy_areas": n_areas - budget,
                "used_prompts": int(round(float(np.mean(used_prompts)))),
                "held_out_prompts": int(round(float(np.mean(held_out_prompts)))),
                "repeats": repeats,
                "cosine_reference": COSINE_REFERENCE,
                "median_layer_cosine_to_heldout": float(np.median(pooled)),
                "p10_layer_cosine_to_heldout": float(np.quantile(pooled, P10_QUANTILE)),
            }
        )
        log.info(
            "generalization: %d used areas, median layer cosine %.4f, p10 %.4f",
            budget,
            rows[-1]["median_layer_cosine_to_heldout"],
            rows[-1]["p10_layer_cosine_to_heldout"],
        )
    table = pd.DataFrame(rows, columns=GENERALIZATION_COLUMNS)
    if return_layer_cosines:
        return table, layer_cosines
    return table


def _projection_auc(unsafe: np.ndarray, safe: np.ndarray) -> np.ndarray:
    """Per layer, the chance that an unsafe prompt projects above a safe one (ties half)."""
    greater = (unsafe[:, None, :] > safe[None, :, :]).mean(axis=(0, 1))
    ties = (unsafe[:, None, :] == safe[None, :, :]).mean(axis=(0, 1))
    return greater + 0.5 * ties


def fit_report(
    states,
    labels,
    areas,
    directions,
    generalization: pd.DataFrame,
    repeats: int,
    layer_cosines: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per layer describing the construction fit.

    The reference columns (split style, prompt counts, the generalization result at the
    construction budget) repeat on every row; the per-layer columns describe the raw mean
    difference, how much of it lay along the safe mean, and how well projections on the
    direction separate unsafe from safe construction prompts.
    """
    states = np.asarray(states)
    labels = np.asarray(labels, dtype=str)
    _check_states(states, labels)
    directions = np.asarray(directions, dtype=np.float64)
    n_areas = len(set(np.asarray(areas, dtype=str).tolist()))

    at_budget = generalization.index[generalization["used_policy_areas"] == n_areas]
    if len(at_budget):
        row = generalization.loc[at_budget[0]]
        median_cosine = float(row["median_layer_cosine_to_heldout"])
        p10_cosine = float(row["p10_layer_cosine_to_heldout"])
        layer_median = np.median(layer_cosines[at_budget[0]], axis=0) if layer_cosines is not None else None
    else:
        log.warning("no generalization budget equals the %d construction areas; leaving it empty", n_areas)
        median_cosine = p10_cosine = float("nan")
        layer_median = None

    safe_mean = states[labels == "safe"].mean(axis=0, dtype=np.float64)
    unsafe_mean = states[labels == "unsafe"].mean(axis=0, dtype=np.float64)
    difference = unsafe_mean - safe_mean
    difference_norm = np.linalg.norm(difference, axis=1)
    safe_norm = np.linalg.norm(safe_mean, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine_to_safe = np.sum(difference * safe_mean, axis=1) / (difference_norm * safe_norm)
    safe_axis = safe_mean / safe_norm[:, None]
    orthogonal = difference - np.sum(difference * safe_axis, axis=1, keepdims=True) * safe_axis

    projections = np.einsum("nlh,lh->nl", states.astype(np.float64), directions)
    unsafe_proj, safe_proj = projections[labels == "unsafe"], projections[labels == "safe"]
    unsafe_sd = unsafe_proj.std(axis=0, ddof=1) if len(unsafe_proj) > 1 else np.full(len(directions), np.nan)
    safe_sd = safe_proj.std(axis=0, ddof=1) if len(safe_proj) > 1 else np.full(len(directions), np.nan)
    pooled_sd = np.sqrt((unsafe_sd**2 + safe_sd**2) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        separation_d = (unsafe_proj.mean(axis=0) - safe_proj.mean(axis=0)) / pooled_sd

    report = pd.DataFrame(
        {
            "split_style": SPLIT_STYLE,
            "construction_prompts": len(labels),
            "construction_safe_prompts": int(np.sum(labels == "safe")),
            "construction_unsafe_prompts": int(np.sum(labels == "unsafe")),
            "construction_policy_areas": n_areas,
            "category_generalization_repeats": int(repeats),
            "category_generalization_reference": COSINE_REFERENCE,
            "median_layer_cosine_to_heldout": median_cosine,
            "p10_layer_cosine_to_heldout": p10_cosine,
            "layer": np.arange(len(directions)),
            "mean_difference_norm": difference_norm,
            "safe_mean_norm": safe_norm,
            "mean_difference_cosine_to_safe_mean": cosine_to_safe,
            "orthogonal_difference_norm": np.linalg.norm(orthogonal, axis=1),
            "unsafe_projection_mean": unsafe_proj.mean(axis=0),
            "unsafe_projection_sd": unsafe_sd,
            "safe_projection_mean": safe_proj.mean(axis=0),
            "safe_projection_sd": safe_sd,
            "projection_separation_d": separation_d,
            "projection_auc": _projection_auc(unsafe_proj, safe_proj),
            "layer_median_cosine_to_heldout": layer_median if layer_median is not None else np.nan,
        }
    )
    return report[FIT_REPORT_COLUMNS + FIT_REPORT_LAYER_COLUMNS]


def model_identity(model: dict) -> tuple[str, str]:
    """(name, revision) of the model config: a Hub repo id and commit, or a package pin."""
    name = model.get("repo_id") or model.get("name") or ""
    if model.get("revision"):
        revision = str(model["revision"])
    elif model.get("package"):
        revision = f"{model['package']}=={model.get('package_version', '')}"
    else:
        revision = str(model.get("path") or "")
    return str(name), revision


def save_directions(
    path: str | os.PathLike,
    directions: np.ndarray,
    safe_mean: np.ndarray,
    unsafe_mean: np.ndarray,
    model: dict,
    construction_areas: Sequence[str],
    prompt_ids: Sequence[str],
    generalization_budgets: Sequence[int] = (),
    generalization_layer_cosines: np.ndarray | None = None,
) -> None:
    name, revision = model_identity(model)
    n_layers = len(directions)
    layer_cosines = (
        np.asarray(generalization_layer_cosines, dtype=np.float32)
        if generalization_layer_cosines is not None
        else np.zeros((0, 0, n_layers), dtype=np.float32)
    )
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(
            tmp,
            directions=np.asarray(directions, dtype=np.float32),
            safe_mean=np.asarray(safe_mean, dtype=np.float32),
            unsafe_mean=np.asarray(unsafe_mean, dtype=np.float32),
            model_name=np.array(name),
            model_revision=np.array(revision),
            construction_areas=np.array(list(construction_areas), dtype=str),
            prompt_ids=np.array(list(prompt_ids), dtype=str),
            generalization_used_policy_areas=np.array(list(generalization_budgets), dtype=np.int64),
            generalization_layer_cosines=layer_cosines,
        )


def load_directions(path: str | os.PathLike) -> dict:
    """The directions npz as a dict of arrays, checked: a float32 'directions' array
    [layers, hidden] whose rows are finite and of unit length."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if "directions" not in arrays:
        raise InputError(f"{path}: no 'directions' array (has {sorted(arrays)})")
    directions = np.asarray(arrays["directions"], dtype=np.float32)
    if directions.ndim != 2:
        raise InputError(f"{path}: 'directions' must be [layers, hidden], got shape {directions.shape}")
    norms = np.linalg.norm(directions.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise InputError(f"{path}: 'directions' rows {bad.tolist()[:10]} are zero or not finite")
    off = np.flatnonzero(np.abs(norms - 1) > 1e-3)
    if len(off):
        raise InputError(f"{path}: directions of layer(s) {off.tolist()} are not unit length")
    arrays["directions"] = directions
    return arrays


def read_directions(path: str | os.PathLike) -> np.ndarray:
    """Only the checked directions [layers, hidden] (float32) of a directions npz."""
    return load_directions(path)["directions"]


def run_fit(
    activations_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    out_directions: str | os.PathLike,
    out_fit_report: str | os.PathLike,
    out_generalization: str | os.PathLike,
    seed: int,
    generalization: dict,
    model: dict,
) -> None:
    """Fit the directions on the construction areas and write the three direction outputs.

    The generalization table is a diagnostic over ALL policy areas in the split (as in the
    reference run); the directions and the fit report use construction rows only.
    """
    missing = [key for key in ("budgets", "repeats") if key not in generalization]
    if missing:
        raise InputError(f"directions/generalization config lacks {missing}")
    split = read_split(split_csv)
    states = load_activations(activations_npz, split["id"])
    log.info("%s: %d prompts x %d layers x %d hidden", activations_npz, *states.shape)
    labels = split["label"].to_numpy(dtype=str)
    areas = split["category"].to_numpy(dtype=str)

    budgets = [int(b) for b in generalization["budgets"]]
    repeats = int(generalization["repeats"])
    table, layer_cosines = category_generalization(
        states, labels, areas, budgets, repeats, seed, return_layer_cosines=True
    )

    construction = (split["split"] == CONSTRUCTION).to_numpy()
    construction_areas = sorted(set(areas[construction].tolist()))
    log.info("fitting on %d construction prompts from areas: %s", construction.sum(), ", ".join(construction_areas))
    directions, safe_mean, unsafe_mean = fit_refusal_directions(states[construction], labels[construction])
    report = fit_report(
        states[construction],
        labels[construction],
        areas[construction],
        directions,
        table,
        repeats,
        layer_cosines,
    )

    save_directions(
        out_directions,
        directions,
        safe_mean,
        unsafe_mean,
        model,
        construction_areas,
        split.loc[construction, "id"].tolist(),
        budgets,
        layer_cosines,
    )
    write_csv(out_fit_report, report)
    write_csv(out_generalization, table)
    log.info("wrote %s, %s, %s", out_directions, out_fit_report, out_generalization)
