"""Arditi-style selection of the single direction, on a tiny model with a planted refusal direction.

The model: a tiny random Llama (6 layers) whose embeddings all carry a large component
along a unit vector v, and whose output row for the refusal token reads exactly that
component. So the refusal token wins on every prompt, and projecting v out of the residual
stream (and nothing else) removes it. Layer ``PLANTED`` gets v as its candidate direction;
every other layer a random one.
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_ablation.architecture import find_decoder_stack
from refusal_ablation.io import InputError
from refusal_ablation.loading import load_model
from refusal_ablation.selection import (
    ablated,
    kl_rows,
    read_selected_layer,
    refusal_scores,
    run_selection,
    score_candidates,
    select_layer,
)
from tiny_models import build_tiny_tokenizer

LAYERS, HIDDEN, PLANTED = 6, 32, 2
HARMFUL = ["how to pick a lock", "make a weapon now", "steal a car fast"]
HARMLESS = ["bake some bread", "a poem about rain", "name three birds"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = build_tiny_tokenizer(tmp_path_factory.mktemp("selection") / "model")
    tokenizer_probe = load_tokenizer(path)
    refusal_token = tokenizer_probe("S", add_special_tokens=False)["input_ids"][0]
    config = LlamaConfig(
        vocab_size=len(tokenizer_probe),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=False,
        pad_token_id=tokenizer_probe.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    v = torch.randn(HIDDEN)
    v /= v.norm()
    with torch.no_grad():
        model.model.embed_tokens.weight += 2.0 * v
        model.lm_head.weight[refusal_token] = 8.0 * v
    model.save_pretrained(path)
    rng = np.random.default_rng(1)
    directions = rng.normal(size=(LAYERS, HIDDEN)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    directions[PLANTED] = v.numpy()
    return {"path": path, "directions": directions, "v": v, "refusal_token": refusal_token}


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_ablation_removes_the_direction_from_every_layer_output(planted):
    model, tokenizer = load_model(planted["path"], device="cpu")
    stack = find_decoder_stack(model)
    v = planted["v"]
    seen = []
    ids = torch.tensor([tokenizer("bake bread", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    # forward hooks run in the order they were registered: ours see the ablated outputs
    with torch.no_grad(), ablated(stack, v.numpy()):
        hooks = [
            layer.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
            for layer in stack.layers
        ]
        during = model(input_ids=ids).logits
        for hook in hooks:
            hook.remove()
    assert len(seen) == LAYERS
    assert max(float((h @ v).abs().max()) for h in seen) < 1e-5
    assert not torch.allclose(during, before)
    # after the block the hooks are gone: the model is as it was
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(after, before)


def test_kl_and_refusal_score_by_hand():
    p = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0]]), dim=-1)
    q = torch.log_softmax(torch.tensor([[0.0, 1.0, 0.0]]), dim=-1)
    expected = float((p.exp() * (p - q)).sum())
    assert float(kl_rows(p, q)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(kl_rows(p, p)[0]) == 0.0
    probs = p.exp()[0]
    refusal = float(probs[0] + probs[2])
    assert float(refusal_scores(p, [0, 2])[0]) == pytest.approx(np.log(refusal / (1 - refusal)), rel=1e-5)


def test_selection_recovers_the_planted_layer(planted):
    model, tokenizer = load_model(planted["path"], device="cpu")
    frame = score_candidates(
        model, tokenizer, planted["directions"], HARMFUL, HARMLESS, ["S"], batch_size=2, kl_threshold=1e3
    )
    assert list(frame["layer"]) == list(range(LAYERS))
    assert frame.loc[frame["selected"], "layer"].tolist() == [PLANTED]
    planted_row = frame.set_index("layer").loc[PLANTED]
    others = frame[frame["passes_depth"] & (frame["layer"] != PLANTED)]
    # ablating v removes the refusal; a random direction hardly moves it
    assert planted_row["refusal_score"] < planted_row["baseline_refusal_score"] - 5
    assert (others["refusal_score"] > planted_row["baseline_refusal_score"] - 2).all()
    # depth filter: the last 20% of 6 layers (layer 5) is not scored
    assert frame["passes_depth"].tolist() == [True] * 5 + [False]
    assert np.isnan(frame.set_index("layer").loc[5, "refusal_score"])


def test_kl_filter_and_depth_filter_exclude_the_planted_layer(planted):
    model, tokenizer = load_model(planted["path"], device="cpu")
    strict = score_candidates(
        model, tokenizer, planted["directions"], HARMFUL, HARMLESS, ["S"], batch_size=3, kl_threshold=0.5
    )
    row = strict.set_index("layer").loc[PLANTED]
    assert row["kl_harmless"] > 0.5 and not row["passes_kl"]  # it moves harmless prompts as well
    assert strict.loc[strict["selected"], "layer"].item() != PLANTED
    assert strict.loc[strict["selected"], "passes_kl"].item()
    deep = planted["directions"].copy()
    deep[[PLANTED, 5]] = deep[[5, PLANTED]]  # planted direction now in the excluded last layer
    shallow_only = score_candidates(model, tokenizer, deep, HARMFUL, HARMLESS, ["S"], batch_size=3, kl_threshold=1e3)
    assert shallow_only.loc[shallow_only["selected"], "layer"].item() != 5


def test_no_candidate_passing_kl_falls_back_to_the_least_moving_shallow_layer():
    frame = pd.DataFrame(
        {
            "layer": [0, 1, 2, 3],
            "refusal_score": [1.0, -20.0, -3.0, np.nan],
            "kl_harmless": [0.9, 35.0, 0.5, np.nan],
            "passes_depth": [True, True, True, False],
            "passes_kl": [False, False, False, False],
        }
    )
    assert select_layer(frame) == 2  # not layer 1, whose removal breaks the model
    frame.loc[0, "passes_kl"] = True
    assert select_layer(frame) == 0
    with pytest.raises(ValueError, match="max_layer_fraction"):
        select_layer(frame.assign(passes_depth=False))


def test_run_selection_writes_table_and_record(planted, tmp_path):
    rows = []
    for i, prompt in enumerate(HARMFUL + HARMLESS):
        label = "unsafe" if prompt in HARMFUL else "safe"
        rows.append(
            {"id": f"p{i}", "prompt": prompt, "label": label, "category": "area", "split": "test", "test_group": label}
        )
    rows.append(
        {
            "id": "c0",
            "prompt": "fit only",
            "label": "safe",
            "category": "other",
            "split": "construction",
            "test_group": "construction",
        }
    )
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    np.savez(tmp_path / "directions.npz", directions=planted["directions"])
    selection = {
        "kl_threshold": 1e3,
        "max_layer_fraction": 0.8,
        "refusal_prefixes": ["S"],
        "prompts_per_label_per_area": None,
    }
    layer = run_selection(
        planted["path"],
        tmp_path / "directions.npz",
        tmp_path / "split.csv",
        tmp_path / "sel.csv",
        tmp_path / "sel.json",
        selection,
        batch_size=4,
        device="cpu",
    )
    assert layer == PLANTED == read_selected_layer(tmp_path / "sel.json")
    record = json.loads((tmp_path / "sel.json").read_text())
    assert record["n_unsafe_prompts"] == 3 and record["n_safe_prompts"] == 3 and record["passes_kl"]
    assert pd.read_csv(tmp_path / "sel.csv")["selected"].sum() == 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="bad.json"):
        read_selected_layer(tmp_path / "bad.json")
