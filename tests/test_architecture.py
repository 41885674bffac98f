"""Decoder layers, residual write paths and post-norm scales, found on real tiny models."""

import pytest
import torch

from refusal_ablation.architecture import (
    ArchitectureError,
    accepts_logits_to_keep,
    find_decoder_stack,
    layer_types,
    norm_scale,
    residual_writers,
    sliding_window,
    uses_sliding_window,
)
from refusal_ablation.loading import load_model
from tiny_models import build_tiny_gemma3, build_tiny_gemma4, build_tiny_llama


def randomise_norm_weights(model, seed: int = 0) -> None:
    """Fresh models init norm weights to a constant, which would hide any sandwich-norm effect."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and isinstance(weight, torch.Tensor):
                weight.copy_(0.5 + 1.5 * torch.rand(weight.shape, generator=generator))


def tiny_checkpoint(builder, path, seed: int = 0):
    """A tiny checkpoint dir from the shared builders, saved again with random norm weights."""
    builder(path)
    model, _ = load_model(path, device="cpu")
    randomise_norm_weights(model, seed)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    loaded = {}
    for name, builder in (("llama", build_tiny_llama), ("gemma3", build_tiny_gemma3), ("gemma4", build_tiny_gemma4)):
        loaded[name] = load_model(tiny_checkpoint(builder, root / name), device="cpu")[0]
    return loaded


@pytest.mark.parametrize(
    "name, layers_name, embedding_name",
    [
        ("llama", "model.layers", "model.embed_tokens"),
        ("gemma3", "model.layers", "model.embed_tokens"),
        ("gemma4", "model.language_model.layers", "model.language_model.embed_tokens"),
    ],
)
def test_decoder_layers_found_by_structure(models, name, layers_name, embedding_name):
    model = models[name]
    stack = find_decoder_stack(model)
    assert stack.layers_name == layers_name
    assert stack.embedding_name == embedding_name
    assert len(stack) == model.config.get_text_config().num_hidden_layers
    assert stack.hidden_size == model.config.get_text_config().hidden_size
    assert stack.layers is model.get_submodule(layers_name)


def test_writers_and_post_norms_traced(models):
    # Llama's post_attention_layernorm exists but normalises the residual, not the attention output
    llama = residual_writers(models["llama"])
    assert [(w.kind, w.norm_name) for w in llama.writers[0]] == [("attention", None), ("mlp", None)]

    gemma3 = residual_writers(models["gemma3"])
    assert [(w.kind, w.norm_name) for w in gemma3.writers[1]] == [
        ("attention", "model.layers.1.post_attention_layernorm"),
        ("mlp", "model.layers.1.post_feedforward_layernorm"),
    ]

    gemma4 = residual_writers(models["gemma4"])
    prefix = "model.language_model.layers.2."
    assert [(w.kind, w.name, w.norm_name) for w in gemma4.writers[2]] == [
        ("attention", prefix + "self_attn.o_proj", prefix + "post_attention_layernorm"),
        ("mlp", prefix + "mlp.down_proj", prefix + "post_feedforward_layernorm"),
        ("per_layer_input", prefix + "per_layer_projection", prefix + "post_per_layer_input_norm"),
    ]
    assert all(len(layer) == 3 for layer in gemma4.writers)


def _direction(v):
    return v / torch.linalg.vector_norm(v)


def test_norm_scale_is_read_from_the_module(models):
    # Gemma 3 scales by 1 + weight, Gemma 4 by weight: the probe must find each without being told
    g3 = models["gemma3"].model.layers[0].post_attention_layernorm
    g4 = models["gemma4"].model.language_model.layers[0].post_feedforward_layernorm
    torch.testing.assert_close(_direction(norm_scale(g3, 32)), _direction(1 + g3.weight.detach()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_direction(norm_scale(g4, 32)), _direction(g4.weight.detach()), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(_direction(norm_scale(g3, 32)), _direction(g3.weight.detach()), atol=1e-3)


def test_norm_scale_refuses_a_mean_subtracting_norm():
    layer_norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        layer_norm.weight.uniform_(0.5, 2.0)
    with pytest.raises(ArchitectureError, match="not an elementwise scale"):
        norm_scale(layer_norm, 16, "toy.layer_norm")


def test_unknown_structure_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(ArchitectureError, match="expected one list of decoder layers"):
        find_decoder_stack(gpt2)


def test_config_questions_are_answered_from_the_text_config(models):
    for name, model in models.items():
        text = model.config.get_text_config()
        assert layer_types(model) == getattr(text, "layer_types", None), name
        assert sliding_window(model) == getattr(text, "sliding_window", None), name
        assert accepts_logits_to_keep(model), name
    gemma4 = models["gemma4"]
    assert layer_types(gemma4)[-1] == "full_attention" and "sliding_attention" in layer_types(gemma4)
    assert sliding_window(gemma4) == 16 and uses_sliding_window(gemma4)
    llama = models["llama"]
    assert sliding_window(llama) is None and not uses_sliding_window(llama)
    # without per-layer types, a set window counts unless use_sliding_window is off
    llama.config.sliding_window = 8
    try:
        assert uses_sliding_window(llama)
        llama.config.use_sliding_window = False
        assert not uses_sliding_window(llama)
    finally:
        llama.config.sliding_window = None
        del llama.config.use_sliding_window
