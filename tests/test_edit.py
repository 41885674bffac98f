"""The weight edits, checked as properties of the saved and reloaded tiny checkpoints."""

import json

import numpy as np
import pytest
import torch
from test_architecture import tiny_checkpoint

from refusal_ablation.architecture import residual_writers
from refusal_ablation.edit import EditError, apply_edit, check_edit, edit_checkpoint, plan_edit, project_out
from refusal_ablation.io import InputError
from refusal_ablation.loading import encode_chat, load_model
from tiny_models import build_tiny_gemma4, build_tiny_llama

PROMPTS = ["How do I bake bread?", "Tell me a secret.", "Write a short poem about rain and wind."]


def unit_rows(rows: int, hidden: int, seed: int) -> np.ndarray:
    directions = np.random.default_rng(seed).normal(size=(rows, hidden)).astype(np.float32)
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def write_directions(path, directions):
    np.savez(path, directions=directions, model_name=np.array("tiny"))
    return path


def load(path):
    return load_model(path, device="cpu")[0]


def relative_component(outputs: torch.Tensor, direction: np.ndarray) -> torch.Tensor:
    """|x . d| / |x| per column of a [hidden, n] matrix."""
    d = torch.as_tensor(direction, dtype=torch.float32)
    outputs = outputs.detach().float()
    return (d @ outputs).abs() / torch.linalg.vector_norm(outputs, dim=0).clamp_min(1e-30)


# ---------------------------------------------------------------- project_out


def test_project_out_removes_direction_and_keeps_column_norms():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(24, 10, generator=generator)
    weight[:, 3] = 0.0  # a zero column stays zero instead of raising
    d = torch.randn(24, generator=generator)
    edited = project_out(weight, d)
    unit = d / d.norm()
    assert (unit @ edited).abs().max() < 1e-5
    torch.testing.assert_close(edited.norm(dim=0), weight.norm(dim=0), rtol=1e-6, atol=1e-6)
    assert edited[:, 3].abs().max() == 0

    # the published formula, in float64: (I - d d^T) W, columns rescaled to their old norms
    w64, d64 = weight.double(), unit.double()
    plain = w64 - torch.outer(d64, d64 @ w64)
    expected = plain * (w64.norm(dim=0) / plain.norm(dim=0).clamp_min(1e-300))
    torch.testing.assert_close(edited.double(), expected, rtol=1e-5, atol=1e-6)

    without_norms = project_out(weight, d, restore_norms=False)
    torch.testing.assert_close(without_norms.double(), plain, rtol=1e-5, atol=1e-6)
    assert (without_norms.norm(dim=0) <= weight.norm(dim=0) + 1e-6).all()


def test_project_out_keeps_dtype_and_computes_in_float32():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(32, 8, generator=generator).to(torch.bfloat16)
    d = torch.randn(32, generator=generator)
    edited = project_out(weight, d)
    assert edited.dtype == torch.bfloat16
    component = relative_component(edited, (d / d.norm()).numpy())
    assert component.max() < 2**-6  # bf16 rounding only; before the edit columns sit near 1/sqrt(32)


def test_project_out_names_matrix_when_a_column_collapses():
    d = torch.zeros(8)
    d[2] = 1.0
    weight = torch.randn(8, 5, generator=torch.Generator().manual_seed(3))
    weight[:, 4] = 3.0 * d
    with pytest.raises(EditError, match=r"model\.layers\.7\.mlp\.down_proj\.weight: column\(s\) \[4\]"):
        project_out(weight, d, name="model.layers.7.mlp.down_proj.weight")
    project_out(weight, d, restore_norms=False)  # nothing to rescale, nothing to refuse


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    paths = {
        "llama": tiny_checkpoint(build_tiny_llama, root / "llama", seed=1),
        "gemma4": tiny_checkpoint(build_tiny_gemma4, root / "gemma4", seed=2),
    }
    directions = write_directions(root / "directions.npz", unit_rows(3, 32, seed=7))
    edited = {}
    for model in paths:
        for method in ("reference", "norm_aware", "arditi"):
            out = root / f"{model}-{method}"
            edit_checkpoint(paths[model], directions, out, method)
            edited[model, method] = out
    return {"base": paths, "edited": edited, "directions": directions, "root": root}


def _writers(path):
    model = load(path)
    return model, residual_writers(model, trace_norms=False)


@pytest.mark.parametrize("name", ["llama", "gemma4"])
def test_reference_edit_reloads_without_direction_and_with_norms(checkpoints, name):
    directions = np.load(checkpoints["directions"])["directions"]
    base_model, base = _writers(checkpoints["base"][name])
    edited_model, edited = _writers(checkpoints["edited"][name, "reference"])
    for layer, (base_writers, edited_writers) in enumerate(zip(base.writers, edited.writers)):
        for before, after in zip(base_writers, edited_writers):
            w0, w1 = before.linear.weight.detach(), after.linear.weight.detach()
            if before.kind in ("attention", "mlp"):
                assert relative_component(w1, directions[layer]).max() < 1e-5, after.name
                assert relative_component(w0, directions[layer]).max() > 1e-2
                torch.testing.assert_close(w1.norm(dim=0), w0.norm(dim=0), rtol=1e-5, atol=1e-6)
            else:  # the reference edit leaves Gemma 4's per-layer-input projection alone
                assert torch.equal(w0, w1), after.name
    untouched = dict(base_model.named_parameters())
    for param_name, value in edited_model.named_parameters():
        if not param_name.endswith(("o_proj.weight", "down_proj.weight")):
            assert torch.equal(value, untouched[param_name]), param_name


def test_edited_checkpoint_carries_tokenizer_generation_config_and_record(checkpoints):
    base, edited = checkpoints["base"]["gemma4"], checkpoints["edited"]["gemma4", "reference"]
    for file in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (edited / file).read_bytes() == (base / file).read_bytes(), file
    assert list(edited.glob("*.safetensors"))
    record = json.loads((edited / "edit.json").read_text())
    assert record["method"] == "reference" and record["restore_norms"] is True
    assert len(record["edited_weights"]) == 2 * 3
    assert not list(checkpoints["root"].glob(".gemma4-reference.*"))  # temp dir renamed away


def _post_write_outputs(path, directions):
    """Max over tokens of |x . d_l| / |x| for what each write path adds to the residual stream."""
    model, tokenizer = load_model(path, device="cpu")
    structure = residual_writers(model)
    worst, hooks = {}, []

    def hook_for(layer, kind):
        d = torch.as_tensor(directions[layer])

        def hook(module, args, output):
            out = output.detach().float().reshape(-1, output.shape[-1])
            worst[layer, kind] = float(((out @ d).abs() / out.norm(dim=1)).max())

        return hook

    for writers in structure.writers:
        for writer in writers:
            module = writer.norm if writer.norm is not None else writer.linear
            hooks.append(module.register_forward_hook(hook_for(writer.layer, writer.kind)))
    ids = encode_chat(tokenizer, PROMPTS[2:])
    with torch.no_grad():
        model(input_ids=torch.tensor(ids), use_cache=False)
    for hook in hooks:
        hook.remove()
    return worst


def test_norm_aware_leaves_nothing_after_the_post_norm_where_reference_leaks(checkpoints):
    directions = np.load(checkpoints["directions"])["directions"]
    baseline = _post_write_outputs(checkpoints["base"]["gemma4"], directions)
    reference = _post_write_outputs(checkpoints["edited"]["gemma4", "reference"], directions)
    norm_aware = _post_write_outputs(checkpoints["edited"]["gemma4", "norm_aware"], directions)
    assert set(norm_aware) == {(layer, kind) for layer in range(3) for kind in ("attention", "mlp", "per_layer_input")}
    assert max(norm_aware.values()) < 1e-5
    for key in reference:
        assert baseline[key] > 1e-2
        assert reference[key] > 1e-3, key  # measurable leak through the random post-norm weights


def test_norm_aware_equals_reference_on_llama(checkpoints):
    directions = np.load(checkpoints["directions"])["directions"]
    reference = dict(load(checkpoints["edited"]["llama", "reference"]).named_parameters())
    norm_aware = dict(load(checkpoints["edited"]["llama", "norm_aware"]).named_parameters())
    assert all(torch.equal(reference[name], norm_aware[name]) for name in reference)
    for key, value in _post_write_outputs(checkpoints["edited"]["llama", "reference"], directions).items():
        assert value < 1e-5, key


@pytest.mark.parametrize("name", ["llama", "gemma4"])
def test_arditi_removes_middle_layer_direction_from_embedding_and_every_writer(checkpoints, name):
    directions = np.load(checkpoints["directions"])["directions"]
    chosen = directions[1]  # 3 layers, arditi_layer null: the middle one
    base_model, base = _writers(checkpoints["base"][name])
    model, edited = _writers(checkpoints["edited"][name, "arditi"])
    embedding = model.get_input_embeddings().weight.detach()
    assert relative_component(embedding.T, chosen).max() < 1e-5
    assert relative_component(embedding.T, directions[0]).max() > 1e-2
    shrunk = []
    for base_writers, writers in zip(base.writers, edited.writers):
        assert len(writers) == (3 if name == "gemma4" else 2)
        for before, writer in zip(base_writers, writers):
            assert relative_component(writer.linear.weight, chosen).max() < 1e-5, writer.name
            norms_before, norms_after = before.linear.weight.norm(dim=0), writer.linear.weight.norm(dim=0)
            assert (norms_after <= norms_before + 1e-6).all()
            shrunk.append(bool((norms_after < norms_before - 1e-4).any()))
    assert all(shrunk)  # no norm preservation


def test_check_edit_fails_when_the_edit_is_missing(checkpoints):
    directions = np.load(checkpoints["directions"])["directions"]
    model = load(checkpoints["base"]["llama"])
    plan = plan_edit(model, directions, "reference")
    norms = {item.name: item.weight.detach().float().norm(dim=0) for item in plan}
    with pytest.raises(EditError, match="keeps a component"):
        check_edit(plan, norms)
    apply_edit(plan)
    check_edit(plan, norms)


def test_bad_inputs_are_named(checkpoints, tmp_path):
    base = checkpoints["base"]["llama"]
    wrong = write_directions(tmp_path / "wrong.npz", unit_rows(2, 32, seed=0))
    with pytest.raises(InputError, match=r"wrong.npz: directions have shape \(2, 32\).*3 decoder layers"):
        edit_checkpoint(base, wrong, tmp_path / "out", "reference")
    np.savez(tmp_path / "nodirs.npz", safe_mean=np.zeros((3, 32)))
    with pytest.raises(InputError, match="nodirs.npz: no 'directions'"):
        edit_checkpoint(base, tmp_path / "nodirs.npz", tmp_path / "out", "reference")
    with pytest.raises(ValueError, match="unknown edit method 'sideways'"):
        edit_checkpoint(base, checkpoints["directions"], tmp_path / "out", "sideways")
    with pytest.raises(ValueError, match="arditi_layer 5 is outside 0..2"):
        edit_checkpoint(base, checkpoints["directions"], tmp_path / "out", "arditi", arditi_layer=5)
    assert not (tmp_path / "out").exists()
