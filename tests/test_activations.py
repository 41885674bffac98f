"""Last-prompt-token activations under left padding, on tiny Llama-style and Gemma 4 models."""

import numpy as np
import pandas as pd
import pytest
import torch

from refusal_ablation.activations import extract_last_token_states, run_activations
from refusal_ablation.io import InputError, load_activations
from refusal_ablation.loading import encode_chat, load_model
from tiny_models import build_tiny_gemma4, build_tiny_llama, one_torch_thread

# different lengths, so a batch of them needs padding
PROMPTS = [
    "Hi",
    "Write a poem about the sea.",
    "How do I make a fake passport at home, step by step?",
    "What is 2 + 2?",
    "Summarise the plot of Hamlet in one paragraph for a school essay.",
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module", params=["llama", "gemma4"])
def model_and_tokenizer(request, tmp_path_factory):
    build = {"llama": build_tiny_llama, "gemma4": build_tiny_gemma4}[request.param]
    return load_model(build(tmp_path_factory.mktemp(request.param)), device="cpu")


def test_batched_extraction_equals_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batched = extract_last_token_states(model, tokenizer, PROMPTS, batch_size=3)
    single = np.stack([extract_last_token_states(model, tokenizer, [p], batch_size=1)[0] for p in PROMPTS])
    assert batched.dtype == np.float32
    assert batched.shape == (len(PROMPTS), model.config.get_text_config().num_hidden_layers, 32)
    np.testing.assert_allclose(batched, single, atol=2e-5)
    # the rows really differ, so equal rows above are not a padding artefact
    assert np.abs(batched[0] - batched[1]).max() > 1e-2


@pytest.mark.parametrize("case", ["llama", "gemma4_wide_window", "gemma4_narrow_window"])
def test_a_shared_prefix_computed_once_gives_the_same_states(case, tmp_path):
    """Prompts behind one long common preamble (like a default system prompt)."""
    from refusal_ablation.prefix import prefix_to_share

    if case == "llama":
        path = build_tiny_llama(tmp_path)
    else:
        # the narrow window (16) is shorter than these prompts: sharing must stand aside there
        window = 1024 if case == "gemma4_wide_window" else 16
        path = build_tiny_gemma4(tmp_path, sliding_window=window, max_position_embeddings=1024)
    model, tokenizer = load_model(path, device="cpu")
    prompts = [f"Answer as a careful and honest assistant would, in plain words. {p}" for p in PROMPTS]
    assert (prefix_to_share(model, encode_chat(tokenizer, prompts)) >= 8) == (case != "gemma4_narrow_window")
    shared = extract_last_token_states(model, tokenizer, prompts, batch_size=3)
    whole = extract_last_token_states(model, tokenizer, prompts, batch_size=3, share_prefix=False)
    np.testing.assert_allclose(shared, whole, atol=2e-5)
    assert np.abs(shared[0] - shared[1]).max() > 1e-2


def test_states_are_the_last_prompt_token_at_each_decoder_layer_output(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    layers = model.get_decoder().layers
    captured = {}
    hooks = [
        layer.register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, out))
        for i, layer in enumerate(layers)
    ]
    try:
        ids = encode_chat(tokenizer, [PROMPTS[2]])[0]
        with torch.inference_mode():
            model(input_ids=torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    states = extract_last_token_states(model, tokenizer, PROMPTS, batch_size=5)[2]

    def output(i):
        out = captured[i]
        return (out[0] if isinstance(out, tuple) else out)[0, -1]

    # decoder layers 0..L-2: exactly the layer's output at the last prompt token
    for i in range(len(layers) - 1):
        np.testing.assert_allclose(states[i], output(i).numpy(), atol=2e-5)
    # the last entry of hidden_states is returned after the final norm (as the reference used it)
    with torch.inference_mode():
        normed = model.get_decoder().norm(output(len(layers) - 1))
    np.testing.assert_allclose(states[-1], normed.numpy(), atol=2e-5)


def _split_csv(path, prompts):
    frame = pd.DataFrame(
        {
            "id": [f"p{i:02d}" for i in range(len(prompts))],
            "prompt": prompts,
            "label": ["safe", "unsafe"] * (len(prompts) // 2) + ["safe"] * (len(prompts) % 2),
            "category": "area",
            "split": "construction",
            "test_group": "construction",
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_run_activations_writes_every_prompt_keyed_by_id(tmp_path):
    model_dir = build_tiny_llama(tmp_path / "model")
    frame = _split_csv(tmp_path / "split.csv", PROMPTS)
    run_activations(tmp_path / "split.csv", model_dir, tmp_path / "act.npz", batch_size=2, device="cpu")
    model, tokenizer = load_model(model_dir, device="cpu")
    expected = extract_last_token_states(model, tokenizer, PROMPTS, batch_size=1)
    reversed_ids = frame["id"].tolist()[::-1]
    np.testing.assert_allclose(load_activations(tmp_path / "act.npz", reversed_ids), expected[::-1], atol=2e-5)


def test_run_activations_rejects_a_split_without_prompts(tmp_path):
    pd.DataFrame({"id": ["a"], "label": ["safe"]}).to_csv(tmp_path / "split.csv", index=False)
    with pytest.raises(InputError, match=r"split\.csv: missing columns \['prompt'"):
        run_activations(tmp_path / "split.csv", tmp_path / "model", tmp_path / "act.npz", 2, "cpu")
