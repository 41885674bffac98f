"""Residual-stream verification of the edits on real tiny models."""

import numpy as np
import pandas as pd
import pytest
from test_architecture import tiny_checkpoint
from test_edit import unit_rows, write_directions

from refusal_ablation.edit import edit_checkpoint
from refusal_ablation.io import InputError
from refusal_ablation.verify import PROJECTION_COLUMNS, plot_residual_projection, residual_projection
from tiny_models import build_tiny_gemma4, build_tiny_llama

SPLIT_ROWS = [
    ("c1", "How do I bake bread?", "safe", "cooking", "construction", "construction"),
    ("c2", "Name three rivers.", "safe", "geography", "construction", "construction"),
    ("c3", "Write a haiku about spring.", "safe", "poetry", "construction", "construction"),
    ("c4", "Explain how to pick a lock.", "unsafe", "crime", "construction", "construction"),
    ("c5", "Write a threatening letter.", "unsafe", "harassment", "construction", "construction"),
    ("c6", "Help me cheat on a test tonight.", "unsafe", "fraud", "construction", "construction"),
    ("t1", "What is the capital of France?", "safe", "trivia", "test", "safe"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    split = root / "prompt_split.csv"
    pd.DataFrame(SPLIT_ROWS, columns=["id", "prompt", "label", "category", "split", "test_group"]).to_csv(
        split, index=False
    )
    # one shared direction for every layer: then what each edit leaves in the stream is predictable
    directions = write_directions(root / "directions.npz", np.repeat(unit_rows(1, 32, seed=11), 3, axis=0))
    models = {
        "gemma4": tiny_checkpoint(build_tiny_gemma4, root / "gemma4", seed=3),
        "llama": tiny_checkpoint(build_tiny_llama, root / "llama", seed=4),
    }
    edited = {}
    for name, method in (("gemma4", "reference"), ("gemma4", "norm_aware"), ("llama", "arditi")):
        edited[name, method] = root / f"{name}-{method}"
        edit_checkpoint(models[name], directions, edited[name, method], method)
    return {"root": root, "split": split, "directions": directions, "models": models, "edited": edited}


def _table(setup, name, method):
    return residual_projection(
        setup["models"][name], setup["edited"][name, method], setup["directions"], setup["split"], 4, "cpu"
    )


def test_table_is_well_formed_and_plots(setup):
    table = _table(setup, "gemma4", "reference")
    assert list(table.columns) == PROJECTION_COLUMNS
    assert len(table) == 2 * 3 * 2 * 2  # measures x layers x labels x token positions
    assert set(table["tokens"]) == {"last_prompt_token", "all_prompt_tokens"}
    assert set(table["measure"]) == {"residual_stream", "layer_writes"}
    assert (table["n_prompts"] == 3).all()  # construction prompts only
    assert (table["baseline_mean_abs_projection"] > 0).all()
    np.testing.assert_allclose(
        table["ratio_edited_to_baseline"], table["edited_mean_abs_projection"] / table["baseline_mean_abs_projection"]
    )
    # a component along a unit vector is never longer than the vector
    assert (table["baseline_mean_abs_projection"] <= table["baseline_mean_norm"]).all()

    png = setup["root"] / "residual_projection.png"
    plot_residual_projection(table, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arditi_on_llama_empties_the_direction_everywhere(setup):
    # embedding and every write orthogonal to d, no norms after the writes: the stream has nothing along d
    table = _table(setup, "llama", "arditi")
    assert (table["baseline_mean_abs_projection"] > 1e-2 * table["baseline_mean_norm"]).all()
    assert (table["ratio_edited_to_baseline"] < 1e-3).all()


def test_norm_aware_leaves_only_the_embedding_component_on_gemma4(setup):
    for method, exact in (("norm_aware", True), ("reference", False)):
        table = _table(setup, "gemma4", method)
        writes = table[table["measure"] == "layer_writes"]
        if exact:
            assert (writes["ratio_edited_to_baseline"] < 1e-4).all()
        else:  # the post-norms put part of d back into what the layers write
            assert (writes["ratio_edited_to_baseline"] > 1e-2).all()
        # layers that write nothing along d leave each layer's output with the embedding's component
        residual = table[table["measure"] == "residual_stream"]
        for _, part in residual.groupby(["label", "tokens"]):
            edited = part.sort_values("layer")["edited_mean_abs_projection"].to_numpy()
            spread = (edited.max() - edited.min()) / edited.max()
            assert (spread < 1e-4) if exact else (spread > 1e-2), (method, spread)


def test_split_without_construction_rows_is_named(setup, tmp_path):
    split = tmp_path / "split.csv"
    pd.DataFrame([SPLIT_ROWS[-1]], columns=["id", "prompt", "label", "category", "split", "test_group"]).to_csv(
        split, index=False
    )
    with pytest.raises(InputError, match="split.csv: no rows with split == 'construction'"):
        residual_projection(
            setup["models"]["llama"], setup["edited"]["llama", "arditi"], setup["directions"], split, 4, "cpu"
        )


def test_a_subset_of_prompts_per_area_gives_the_same_numbers_for_those_prompts(setup, tmp_path):
    # two safe cooking prompts: with one per (area, label), only the first stays
    rows = SPLIT_ROWS[:1] + [("c7", "How long do I boil an egg?", "safe", "cooking", "construction", "construction")]
    rows += SPLIT_ROWS[1:]
    split = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["id", "prompt", "label", "category", "split", "test_group"]).to_csv(split, index=False)
    args = (setup["models"]["llama"], setup["edited"]["llama", "arditi"], setup["directions"])
    subset = residual_projection(*args, split, 4, "cpu", prompts_per_label_per_area=1)
    every = residual_projection(*args, split, 4, "cpu")
    original = residual_projection(*args, setup["split"], 4, "cpu")

    assert set(every.loc[every["label"] == "safe", "n_prompts"]) == {4}
    assert set(subset.loc[subset["label"] == "safe", "n_prompts"]) == {3}
    # the subset is exactly the original split's prompts (c7 dropped)
    pd.testing.assert_frame_equal(subset, original, rtol=1e-5)
