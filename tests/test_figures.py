"""Figures drawn from real stats tables, and the report captions that describe them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jinja2
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from docutils.core import publish_parts
from test_stats import EDITED, judgments_from_flips, run_write_stats

from refusal_ablation.figures import condition_colours, plot_flip_table, write_figures
from refusal_ablation.io import InputError

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("overall", "category_change", "flip_table", "answer_lengths")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Stats tables of a small paired run (one unparsable judgment), and every figure drawn from them."""
    tmp_path = tmp_path_factory.mktemp("figures")
    judgments = judgments_from_flips({(0, 1): 12, (1, 0): 2, (0, 0): 10, (1, 1): 6}, categories=6, seed=4)
    # SORRY-Bench ids 10..15, so that the dumbbell must show their names.
    judgments["category"] = (judgments["category"].astype(int) + 9).astype(str)
    judgments.loc[(judgments["question_id"] == 3) & (judgments["condition"] == EDITED), "score"] = np.nan
    lengths = {
        "baseline": [(int(t), False) for t in np.linspace(5, 40, 30)],
        EDITED: [(int(t), t >= 48) for t in np.linspace(10, 48, 30)],
    }
    stats = run_write_stats(tmp_path, judgments, lengths, resamples=50)
    outputs = {name: [tmp_path / f"{name}.png", tmp_path / f"{name}.svg"] for name in FIGURES}
    write_figures(
        overall_csv=stats / "overall.csv",
        paired_csv=stats / "paired.csv",
        flip_table_csv=stats / "flip_table.csv",
        per_category_csv=stats / "per_category.csv",
        baseline_lengths=tmp_path / "baseline.lengths.csv",
        edited_lengths=tmp_path / f"{EDITED}.lengths.csv",
        overall=outputs["overall"],
        category_change=outputs["category_change"],
        flip_table=outputs["flip_table"],
        answer_lengths=outputs["answer_lengths"],
        subtitle="edit: reference; judge: strmatch",
    )
    return SimpleNamespace(stats=stats, outputs=outputs, tmp_path=tmp_path)


def test_figures_are_byte_identical_between_renders(drawn, tmp_path):
    outputs = {name: [tmp_path / f"{name}.png", tmp_path / f"{name}.svg"] for name in FIGURES}
    write_figures(
        overall_csv=drawn.stats / "overall.csv",
        paired_csv=drawn.stats / "paired.csv",
        flip_table_csv=drawn.stats / "flip_table.csv",
        per_category_csv=drawn.stats / "per_category.csv",
        baseline_lengths=drawn.tmp_path / "baseline.lengths.csv",
        edited_lengths=drawn.tmp_path / f"{EDITED}.lengths.csv",
        subtitle="edit: reference; judge: strmatch",
        **{name: outputs[name] for name in FIGURES},
    )
    for name in FIGURES:
        for again, first in zip(outputs[name], drawn.outputs[name]):
            assert again.read_bytes() == first.read_bytes(), again.name


@pytest.mark.parametrize("name", FIGURES)
def test_figure_png_is_a_non_blank_image(drawn, name):
    png = drawn.outputs[name][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05


@pytest.mark.parametrize(
    "name,texts",
    [
        ("overall", ["Compliance before and after the edit", "baseline", EDITED, "exact McNemar p", "Wilson"]),
        (
            "category_change",
            ["Compliance per category, sorted by change", "Property Crimes (10)", "Financial Crimes (15)"],
        ),
        ("flip_table", ["Paired judgments of 30 prompts", "unparsable", "Baseline model", "Edited model"]),
        ("answer_lengths", ["Answer length per condition", "Answer length (tokens)", "hit the limit"]),
    ],
)
def test_figure_svg_is_titled_and_labelled(drawn, name, texts):
    svg = drawn.outputs[name][1].read_text()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    for text in texts:
        assert text in svg, text
    assert "edit: reference; judge: strmatch" in svg


def test_category_change_is_sorted_by_change(drawn):
    per_category = pd.read_csv(drawn.stats / "per_category.csv", dtype={"category": str})
    svg = drawn.outputs["category_change"][1].read_text()
    names = {row.category: f"{row.category_name} ({row.category})" for row in per_category.itertuples()}
    # Drawn bottom-up, so the SVG lists the labels in order of increasing change.
    positions = {category: svg.index(label) for category, label in names.items()}
    drawn_order = sorted(positions, key=positions.get)
    changes = per_category.set_index("category")["change"]
    assert list(changes[drawn_order]) == sorted(changes)


def test_flip_table_heatmap_hides_empty_unparsable_level(tmp_path):
    flips = pd.DataFrame(
        [
            {
                "baseline": b,
                "edited": e,
                "count": {("refusal", "compliance"): 7, ("refusal", "refusal"): 3}.get((b, e), 0),
            }
            for b in ("refusal", "compliance", "unparsable")
            for e in ("refusal", "compliance", "unparsable")
        ]
    )
    plot_flip_table(flips, [tmp_path / "flip.svg"])
    svg = (tmp_path / "flip.svg").read_text()
    assert "unparsable" not in svg and "Paired judgments of 10 prompts" in svg


def test_condition_colours_are_distinct_and_baseline_fixed():
    colours = condition_colours(["baseline", "edited_reference", "edited_norm_aware"])
    assert colours["baseline"] == "#0072B2"
    assert len(set(colours.values())) == 3


def test_figures_reject_a_table_missing_columns(drawn, tmp_path):
    broken = tmp_path / "overall.csv"
    pd.read_csv(drawn.stats / "overall.csv").drop(columns=["ci_high"]).to_csv(broken, index=False)
    with pytest.raises(InputError, match=r"overall\.csv: missing columns \['ci_high'\]"):
        write_figures(
            overall_csv=broken,
            paired_csv=drawn.stats / "paired.csv",
            flip_table_csv=drawn.stats / "flip_table.csv",
            per_category_csv=drawn.stats / "per_category.csv",
            baseline_lengths=drawn.tmp_path / "baseline.lengths.csv",
            edited_lengths=drawn.tmp_path / f"{EDITED}.lengths.csv",
            overall=[tmp_path / "o.png"],
            category_change=[tmp_path / "c.png"],
        )
    assert not (tmp_path / "o.png").exists()


def test_figures_reject_unknown_format(drawn, tmp_path):
    with pytest.raises(ValueError, match="figure format"):
        write_figures(
            overall_csv=drawn.stats / "overall.csv",
            paired_csv=drawn.stats / "paired.csv",
            flip_table_csv=drawn.stats / "flip_table.csv",
            per_category_csv=drawn.stats / "per_category.csv",
            baseline_lengths=drawn.tmp_path / "baseline.lengths.csv",
            edited_lengths=drawn.tmp_path / f"{EDITED}.lengths.csv",
            overall=[tmp_path / "o.gif"],
            category_change=[tmp_path / "c.png"],
        )


# ---------------------------------------------------------------- report captions


@pytest.mark.parametrize("config_file", ["config/config.yaml", "config/demo.yaml"])
def test_report_captions_render_as_restructured_text(config_file):
    """Every caption renders under Jinja (as Snakemake does) and parses without a docutils warning."""
    config = yaml.safe_load((REPO / config_file).read_text())
    snakemake = SimpleNamespace(
        config=config,
        wildcards=SimpleNamespace(edit="reference", judge="strmatch"),
        params=SimpleNamespace(alpha=0.05, bootstrap_resamples=100, seed=2445),
    )
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    captions = sorted((REPO / "workflow" / "report").glob("*.rst"))
    assert {"workflow.rst", "figure_overall_compliance.rst", "figure_category_change.rst"} <= {c.name for c in captions}
    for caption in captions:
        # as Snakemake renders them; the demo end-to-end test renders workflow.rst with real results
        text = environment.from_string(caption.read_text()).render(snakemake=snakemake, categories={}, files=[])
        html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["body"]
        assert len(html) > 100, caption.name
        if caption.name == "workflow.rst":
            assert config["model"]["name"] in html
            assert ("model organism" in html) == bool(config.get("refusal_tune", {}).get("enabled"))


def test_report_front_page_holds_each_summary_and_overall_figure(drawn, tmp_path, monkeypatch):
    """workflow.rst, rendered as Snakemake renders it (Jinja, then docutils from the working
    directory), puts the summary sentences and the overall figure on the landing page."""
    import shutil

    stats = tmp_path / "results/stats/strmatch/reference"
    figures = tmp_path / "results/figures/strmatch/reference"
    stats.mkdir(parents=True)
    figures.mkdir(parents=True)
    for name in ("summary.md", "summary.html"):
        shutil.copy(drawn.stats / name, stats / name)
    shutil.copy(drawn.outputs["overall"][1], figures / "overall_compliance.svg")
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    files = [SimpleNamespace(path=Path("results/stats/strmatch/reference/summary.html"))]
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    text = environment.from_string((REPO / "workflow/report/workflow.rst").read_text()).render(
        snakemake=SimpleNamespace(config=config), categories={}, files=files
    )
    html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})["html_body"]
    front = html[html.index("Headline") :]
    sentences = [s for s in (stats / "summary.md").read_text().split("\n\n")[2:] if s.strip()]
    assert sentences and sentences[0].split(";")[0].split("(")[0] in front
    assert "strmatch judge, reference edit" in front
    assert "<svg" in front and "edit: reference; judge: strmatch" in front
