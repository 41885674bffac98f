"""Where a decoder-only model keeps its decoder layers and what writes to its residual stream.

This is the one module with model-specific knowledge. Everything else (the edit, the
verification) works on what it returns:

- ``find_decoder_stack(model)`` finds the decoder layers by structure (a ``ModuleList``
  whose layers hold an attention output projection and an MLP down projection of the
  model's hidden size, beside the input embedding), so Llama-style ``model.model.layers``,
  Gemma 3 and the multimodal Gemma 4 ``model.model.language_model.layers`` all work.
- ``residual_writers(model)`` lists, per layer, the matrices that write to the residual
  stream (``self_attn.o_proj``, ``mlp.down_proj`` and Gemma 4's per-layer-input
  ``per_layer_projection``) and, when asked to trace, the norm module that sits between
  each matrix and the residual add. The norm is found by running the model once on a few
  tokens and matching each matrix's output with a norm's input, because names lie: Llama's
  ``post_attention_layernorm`` normalises the residual before the MLP, Gemma's normalises
  the attention output.
- ``text_config``, ``layer_types``, ``sliding_window``, ``uses_sliding_window`` and
  ``accepts_logits_to_keep`` answer what the rest of the library asks of a model's config
  and forward signature (attention kinds per layer, the sliding window, whether the output
  layer can skip positions).
- ``norm_scale(norm, hidden_size)`` measures a norm's effective elementwise scale by
  probing the module (Gemma 3 multiplies by ``1 + weight``, Gemma 4 by ``weight``), and
  refuses modules that are not "scale times x over a scalar".
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)

# Residual write paths by their place in a decoder layer; the first two are the reference edit's.
WRITER_PATHS = {
    "attention": ("self_attn.o_proj",),
    "mlp": ("mlp.down_proj",),
    "per_layer_input": ("per_layer_projection",),
}
REFERENCE_KINDS = ("attention", "mlp")
# Submodules that mean a layer writes to the residual stream through paths not covered here.
UNSUPPORTED_SUBMODULES = ("experts", "router", "altup", "laurel")
TRACE_TOKENS = 6


class ArchitectureError(ValueError):
    """The model's structure is not one this project knows how to edit."""


@dataclass
class DecoderStack:
    layers_name: str  # module path of the ModuleList, e.g. "model.language_model.layers"
    layers: nn.ModuleList
    embedding_name: str
    embedding: nn.Embedding
    hidden_size: int

    def __len__(self) -> int:
        return len(self.layers)


@dataclass
class ResidualWriter:
    layer: int
    kind: str  # "attention", "mlp" or "per_layer_input"
    name: str  # module path of the Linear
    linear: nn.Linear  # weight [hidden, in]: column j is what input unit j writes
    norm_name: str | None = None  # module between the Linear and the residual add, if any
    norm: nn.Module | None = None


@dataclass
class ResidualStructure:
    stack: DecoderStack
    writers: list[list[ResidualWriter]] = field(default_factory=list)  # per layer
    norms_traced: bool = False


# ---------------------------------------------------------------- what the config and forward say


def text_config(model: nn.Module):
    """The text decoder's config (the model's own config for a text-only model)."""
    return model.config.get_text_config()


def layer_types(model: nn.Module) -> list[str] | None:
    """Per decoder layer, its attention kind as the config declares it ("full_attention",
    "sliding_attention"), or None when the config declares none."""
    return getattr(text_config(model), "layer_types", None)


def sliding_window(model: nn.Module) -> int | None:
    """The window of the config's sliding-window attention, or None when it declares none."""
    return getattr(text_config(model), "sliding_window", None)


def uses_sliding_window(model: nn.Module) -> bool:
    """Whether some layer attends through a sliding window: one of ``layer_types`` says so, or
    (no ``layer_types``) a window is set and ``use_sliding_window`` is not off."""
    window = sliding_window(model)
    types = layer_types(model) or []
    return window is not None and (
        "sliding_attention" in types or (not types and getattr(text_config(model), "use_sliding_window", True))
    )


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (compute the output layer at some positions only)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


# ---------------------------------------------------------------- decoder layers


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _layer_writers(layer: nn.Module) -> dict[str, tuple[str, nn.Linear]]:
    found = {}
    for kind, paths in WRITER_PATHS.items():
        for path in paths:
            module = _get(layer, path)
            if isinstance(module, nn.Linear):
                found[kind] = (path, module)
                break
    return found


def _looks_like_decoder_list(module: nn.Module, hidden_size: int) -> bool:
    if not isinstance(module, nn.ModuleList) or len(module) == 0:
        return False
    for layer in module:
        writers = _layer_writers(layer)
        if not all(kind in writers for kind in REFERENCE_KINDS):
            return False
        if any(linear.out_features != hidden_size for _, linear in writers.values()):
            return False
    return True


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def find_decoder_stack(model: nn.Module) -> DecoderStack:
    """The decoder layers of a causal LM, found by structure rather than by one path."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise ArchitectureError(f"{type(model).__name__}: input embedding is not an nn.Embedding")
    names = {id(module): name for name, module in model.named_modules()}
    embedding_name = names[id(embedding)]
    hidden_size = embedding.embedding_dim
    candidates = [
        (name, module) for name, module in model.named_modules() if _looks_like_decoder_list(module, hidden_size)
    ]
    if len(candidates) > 1:
        # Vision towers also have attention + MLP layers; the text decoder sits beside the embedding.
        candidates = [(n, m) for n, m in candidates if _parent(n) == _parent(embedding_name)]
    if len(candidates) != 1:
        raise ArchitectureError(
            f"{type(model).__name__}: expected one list of decoder layers with self_attn.o_proj and "
            f"mlp.down_proj writing to hidden size {hidden_size}, found "
            f"{[n for n, _ in candidates] or 'none'}"
        )
    layers_name, layers = candidates[0]
    text_config = model.config.get_text_config() if hasattr(model, "config") else None
    expected = getattr(text_config, "num_hidden_layers", None)
    if expected is not None and expected != len(layers):
        raise ArchitectureError(
            f"{type(model).__name__}: {layers_name} holds {len(layers)} layers but the config says "
            f"num_hidden_layers={expected}"
        )
    for index, layer in enumerate(layers):
        for sub in UNSUPPORTED_SUBMODULES:
            if _get(layer, sub) is not None:
                raise ArchitectureError(
                    f"{layers_name}.{index}: has a '{sub}' submodule, a residual write path this "
                    "project does not edit (mixture-of-experts / Gemma 3n layers are not supported)"
                )
    return DecoderStack(layers_name, layers, embedding_name, embedding, hidden_size)


def _trace_post_norms(model: nn.Module, structure: ResidualStructure) -> None:
    """Run a few tokens through the model; a writer's post-norm is the norm fed its output."""
    layers_name = structure.stack.layers_name
    writer_outputs: dict[str, list[torch.Tensor]] = {}
    norm_inputs: dict[str, list[torch.Tensor]] = {}
    norms: dict[str, nn.Module] = {}
    hooks = []

    def record(store, key, take_input):
        def hook(module, args, output):
            value = args[0] if take_input else output
            if isinstance(value, torch.Tensor):
                store.setdefault(key, []).append(value.detach())

        return hook

    try:
        for index, layer in enumerate(structure.stack.layers):
            for writer in structure.writers[index]:
                hooks.append(writer.linear.register_forward_hook(record(writer_outputs, writer.name, False)))
            for sub_name, sub in layer.named_modules():
                if sub_name and "norm" in type(sub).__name__.lower():
                    key = f"{layers_name}.{index}.{sub_name}"
                    norms[key] = sub
                    hooks.append(sub.register_forward_hook(record(norm_inputs, key, True)))
        device = next(model.parameters()).device
        vocab = structure.stack.embedding.num_embeddings
        input_ids = (torch.arange(1, TRACE_TOKENS + 1, device=device) % vocab).unsqueeze(0)
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()

    for index, writers in enumerate(structure.writers):
        prefix = f"{layers_name}.{index}."
        for writer in writers:
            outputs = writer_outputs.get(writer.name, [])
            if len(outputs) != 1:
                raise ArchitectureError(f"{writer.name}: expected one call in a forward pass, saw {len(outputs)}")
            produced = outputs[0]
            consumers = [
                key
                for key, inputs in norm_inputs.items()
                if key.startswith(prefix)
                and any(x is produced or (x.shape == produced.shape and torch.equal(x, produced)) for x in inputs)
            ]
            if len(consumers) > 1:
                raise ArchitectureError(f"{writer.name}: output feeds several norms {consumers}")
            if consumers:
                writer.norm_name = consumers[0]
                writer.norm = norms[consumers[0]]
    structure.norms_traced = True


def residual_writers(model: nn.Module, trace_norms: bool = True) -> ResidualStructure:
    """Per decoder layer, the matrices that write to the residual stream (and their post-norms)."""
    stack = find_decoder_stack(model)
    names = {id(module): name for name, module in model.named_modules()}
    structure = ResidualStructure(stack=stack)
    for index, layer in enumerate(stack.layers):
        found = _layer_writers(layer)
        structure.writers.append(
            [
                ResidualWriter(layer=index, kind=kind, name=names[id(linear)], linear=linear)
                for kind, (_, linear) in found.items()
            ]
        )
    if trace_norms:
        _trace_post_norms(model, structure)
        log.info(
            "residual writers of %s: %s",
            stack.layers_name,
            ", ".join(
                f"{w.kind}->{w.norm_name.rsplit('.', 1)[-1] if w.norm_name else 'residual'}"
                for w in structure.writers[0]
            ),
        )
    return structure


def norm_scale(norm: nn.Module, hidden_size: int, name: str = "norm") -> torch.Tensor:
    """Effective elementwise scale w of a norm computing w * x / s(x) with a scalar s(x).

    Measured on the module: feeding ones gives w up to a positive constant (enough here, the
    edit only needs the direction of w * d); a random probe then checks that the module
    really is a scalar normalisation times w (no mean subtraction, no bias).
    """
    param = next(norm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(hidden_size, generator=generator).to(device)
    with torch.no_grad():
        scale = norm(torch.ones(hidden_size, device=device)).float()
        response = norm(probe).float()
    unusable = not torch.isfinite(scale).all() or scale.abs().max() == 0
    if not unusable:
        # For w * x / s(x): response_i / (scale_i * probe_i) is one constant for every i with w_i != 0.
        active = scale.abs() > 1e-6 * scale.abs().max()
        ratio = response[active] / (scale[active] * probe[active])
        unusable = bool((ratio.max() - ratio.min()).abs() > 1e-4 * ratio.abs().mean())
    if unusable:
        raise ArchitectureError(
            f"{name} ({type(norm).__name__}): not an elementwise scale of a scalar-normalised input "
            "(mean subtraction or bias?); the norm-aware edit cannot account for it"
        )
    return scale
