"""Edit variants: strength, layer bands and write paths, and how the config names them."""

import json

import numpy as np
import pytest
import torch
from test_architecture import tiny_checkpoint
from test_edit import load, relative_component, unit_rows, write_directions

from refusal_ablation.architecture import residual_writers
from refusal_ablation.edit import edit_checkpoint, project_out
from refusal_ablation.variants import VariantError, edit_variants, selected_layers, sweep_name
from tiny_models import build_tiny_gemma4, build_tiny_llama

# ---------------------------------------------------------------- config expansion


def test_methods_keep_their_names_and_full_strength():
    variants = edit_variants({"methods": ["reference", "norm_aware"]})
    assert list(variants) == ["reference", "norm_aware"]
    assert variants["norm_aware"] == {"method": "norm_aware", "scale": 1.0, "layers": "all", "components": None}


def test_sweep_expands_to_named_grid_in_config_order():
    variants = edit_variants(
        {
            "methods": ["arditi"],
            "variants": {"norm_aware_mid": {"method": "norm_aware", "layers": "middle_third"}},
            "sweep": {"method": ["reference", "norm_aware"], "scale": [0.25, 0.5, 1.0]},
        }
    )
    assert list(variants) == [
        "arditi",
        "norm_aware_mid",
        "reference_s025",
        "reference_s050",
        "reference_s100",
        "norm_aware_s025",
        "norm_aware_s050",
        "norm_aware_s100",
    ]
    assert variants["norm_aware_s025"]["scale"] == 0.25
    banded = edit_variants({"sweep": {"method": ["reference"], "scale": [1], "layers": ["all", "2-5"]}})
    assert list(banded) == ["reference_s100_Lall", "reference_s100_L2to5"]
    assert banded["reference_s100_L2to5"]["layers"] == "2-5"
    assert sweep_name("norm_aware", 0.5) == "norm_aware_s050"


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"methods": []}, "no edit configured"),
        ({"variants": {"x": {"method": "sideways"}}}, r"edit\.variants\.x\.method"),
        ({"variants": {"x": {"method": "reference", "scale": -1}}}, r"edit\.variants\.x\.scale"),
        ({"variants": {"x": {"method": "reference", "layers": "9-3"}}}, "ends before it starts"),
        ({"variants": {"x": {"method": "reference", "layers": "most"}}}, r"edit\.variants\.x\.layers"),
        ({"variants": {"x": {"method": "reference", "components": ["lm_head"]}}}, r"edit\.variants\.x\.components"),
        ({"variants": {"x": {"method": "reference", "strength": 1}}}, "unknown key"),
        ({"variants": {"bad-name": {"method": "reference"}}}, "only letters"),
        ({"methods": ["reference"], "variants": {"reference": {"method": "reference"}}}, "defined twice"),
        ({"sweep": {"method": ["reference"]}}, r"edit\.sweep: needs lists"),
        ({"sweep": {"method": ["reference"], "scale": []}}, r"edit\.sweep\.scale"),
    ],
)
def test_bad_variants_name_their_config_key(edit, message):
    with pytest.raises(VariantError, match=message):
        edit_variants(edit)


def test_layer_bands():
    assert selected_layers("all", 4) == [0, 1, 2, 3]
    assert selected_layers("first_third", 9) == [0, 1, 2]
    assert selected_layers("middle_third", 9) == [3, 4, 5]
    assert selected_layers("last_third", 9) == [6, 7, 8]
    assert selected_layers("middle_third", 35) == list(range(12, 23))
    assert selected_layers("1-2", 4) == [1, 2]
    assert selected_layers([0, 3], 4) == [0, 3]
    with pytest.raises(VariantError, match=r"layer\(s\) \[4\] do not exist"):
        selected_layers("2-4", 4)


# ---------------------------------------------------------------- the edits


def test_project_out_scale_removes_that_share_of_the_component():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 8, generator=generator)
    d = torch.randn(16, generator=generator)
    unit = d / d.norm()
    assert torch.equal(project_out(weight, d, scale=0.0), weight)
    torch.testing.assert_close(project_out(weight, d, scale=1.0), project_out(weight, d))
    half = project_out(weight, d, restore_norms=False, scale=0.5)
    torch.testing.assert_close(unit @ half, 0.5 * (unit @ weight), rtol=1e-5, atol=1e-6)
    half_kept = project_out(weight, d, scale=0.5)
    torch.testing.assert_close(half_kept.norm(dim=0), weight.norm(dim=0), rtol=1e-5, atol=1e-6)
    # the direction's share of each column shrinks, in the same ratio as without restoration
    ratio = lambda w: (unit @ w) / (w - torch.outer(unit, unit @ w)).norm(dim=0)  # noqa: E731
    torch.testing.assert_close(ratio(half_kept), ratio(half), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {
        "root": root,
        "llama": tiny_checkpoint(build_tiny_llama, root / "llama", seed=1),
        "gemma4": tiny_checkpoint(build_tiny_gemma4, root / "gemma4", seed=2),
        "directions": write_directions(root / "directions.npz", unit_rows(3, 32, seed=7)),
    }


def _params(path):
    return {name: value.detach().clone() for name, value in load(path).named_parameters()}


@pytest.mark.parametrize("method", ["reference", "norm_aware", "arditi"])
def test_scale_zero_leaves_every_weight_bit_identical(base, method):
    out = base["root"] / f"zero-{method}"
    edit_checkpoint(base["gemma4"], base["directions"], out, method, scale=0.0)
    before, after = _params(base["gemma4"]), _params(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("method", ["reference", "norm_aware"])
def test_scale_one_equals_the_full_edit(base, method):
    full, scaled = base["root"] / f"full-{method}", base["root"] / f"one-{method}"
    edit_checkpoint(base["gemma4"], base["directions"], full, method)
    edit_checkpoint(base["gemma4"], base["directions"], scaled, method, scale=1.0, layers="all")
    a, b = _params(full), _params(scaled)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_half_scale_passes_its_own_check_and_records_itself(base):
    out = base["root"] / "half"
    edit_checkpoint(base["llama"], base["directions"], out, "reference", scale=0.5)
    record = json.loads((out / "edit.json").read_text())
    assert record["scale"] == 0.5 and record["layers"] == [0, 1, 2]
    directions = np.load(base["directions"])["directions"]
    base_writers = residual_writers(load(base["llama"]), trace_norms=False).writers
    edited_writers = residual_writers(load(out), trace_norms=False).writers
    for layer in range(3):
        for before, after in zip(base_writers[layer], edited_writers[layer]):
            shrunk = relative_component(after.linear.weight, directions[layer])
            original = relative_component(before.linear.weight, directions[layer])
            assert (shrunk < original).all() and (shrunk > 0.2 * original).all(), after.name


def test_layer_band_edits_exactly_those_layers(base):
    out = base["root"] / "band"
    edit_checkpoint(base["gemma4"], base["directions"], out, "norm_aware", layers="1-2")
    before, after = _params(base["gemma4"]), _params(out)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "the band edit changed nothing"
    assert all(".layers.1." in name or ".layers.2." in name for name in changed), sorted(changed)
    assert any(".layers.1." in name for name in changed) and any(".layers.2." in name for name in changed)
    assert json.loads((out / "edit.json").read_text())["layers"] == [1, 2]


def test_components_choose_the_write_paths(base):
    out = base["root"] / "mlp-only"
    edit_checkpoint(base["gemma4"], base["directions"], out, "reference", components=["mlp", "embedding"])
    before, after = _params(base["gemma4"]), _params(out)
    changed = sorted(name for name in before if not torch.equal(before[name], after[name]))
    assert any(name.endswith("embed_tokens.weight") for name in changed)
    assert all(name.endswith(("down_proj.weight", "embed_tokens.weight")) for name in changed), changed
    assert sum(name.endswith("down_proj.weight") for name in changed) == 3
