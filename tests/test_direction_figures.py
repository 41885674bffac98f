import matplotlib.image as mpimg
import numpy as np
import pytest
from test_directions import N_LAYERS, fit_inputs

from refusal_ablation.direction_figures import (
    activation_projection_table,
    plot_direction_stability,
    plot_layer_separation,
    run_direction_figures,
)
from refusal_ablation.directions import run_fit
from refusal_ablation.io import InputError


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fit")
    fit_inputs(tmp_path, np.random.default_rng(10))
    paths = {
        "activations": tmp_path / "construction.npz",
        "split": tmp_path / "prompt_split.csv",
        "directions": tmp_path / "refusal_directions.npz",
        "fit_report": tmp_path / "direction_fit_report.csv",
        "generalization": tmp_path / "category_generalization_table.csv",
    }
    run_fit(
        paths["activations"],
        paths["split"],
        paths["directions"],
        paths["fit_report"],
        paths["generalization"],
        seed=2445,
        generalization={"budgets": [1, 2, 4], "repeats": 2},
        model={"name": "tiny"},
    )
    return paths


@pytest.fixture(scope="module")
def figures(fitted, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures") / "directions"
    paths = {
        "stability": out / "direction_stability.png",
        "separation": out / "layer_separation.png",
        "summary_only": out / "summary_only.png",
    }
    run_direction_figures(
        fitted["generalization"],
        fitted["directions"],
        fitted["activations"],
        fitted["split"],
        paths["stability"],
        paths["separation"],
    )
    plot_direction_stability(fitted["generalization"], paths["summary_only"])
    return paths


def assert_real_figure(png):
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    image = mpimg.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # drawn content, not a blank canvas
    svg = png.with_suffix(".svg")
    text = svg.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<?xml") and "<svg" in text and len(text) > 5000
    return image


def test_direction_stability_figure(figures):
    narrow = assert_real_figure(figures["summary_only"])
    wide = assert_real_figure(figures["stability"])
    # With the per-layer cosines from the directions file, a per-layer panel sits beside the summary.
    assert wide.shape[1] > 1.6 * narrow.shape[1]


def test_layer_separation_figure(fitted, figures):
    projections = activation_projection_table(fitted["activations"], fitted["split"], fitted["directions"])
    assert len(projections) == 48 * N_LAYERS
    construction = projections[projections["split"] == "construction"]
    means = construction.groupby("label")["projection"].mean()
    assert means["unsafe"] > means["safe"] + 1.0
    image = assert_real_figure(figures["separation"])
    assert image.shape[0] > image.shape[1] / 2  # two stacked panels: construction and test areas


def test_figures_reject_bad_inputs(fitted, tmp_path):
    bad = tmp_path / "bad_generalization.csv"
    bad.write_text("used_policy_areas,repeats\n2,5\n", encoding="utf-8")
    with pytest.raises(InputError, match="bad_generalization.csv: missing column"):
        plot_direction_stability(bad, tmp_path / "x.png")
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, directions=np.eye(2, 5, dtype=np.float32))
    with pytest.raises(InputError, match=r"construction.npz: activations have \[layers, hidden\]"):
        plot_layer_separation(fitted["activations"], fitted["split"], wrong_shape, tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()


def test_direction_figures_are_byte_identical_between_renders(fitted, tmp_path):
    """Two renders of the same inputs give the same PNG and SVG bytes, even with no global
    svg.hashsalt set (another module may set one; the direction figures must not rely on it)."""
    import matplotlib.pyplot as plt

    renders = []
    for name in ("first", "second"):
        out = tmp_path / name
        with plt.rc_context({"svg.hashsalt": None}):
            run_direction_figures(
                fitted["generalization"],
                fitted["directions"],
                fitted["activations"],
                fitted["split"],
                out / "direction_stability.png",
                out / "layer_separation.png",
            )
        renders.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert sorted(renders[0]) == [
        "direction_stability.png",
        "direction_stability.svg",
        "layer_separation.png",
        "layer_separation.svg",
    ]
    for name in renders[0]:
        assert renders[0][name] == renders[1][name], name
