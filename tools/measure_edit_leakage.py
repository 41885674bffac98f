"""How much of a refusal direction survives the `reference` edit on a Gemma 4 E4B-shaped model?

A random-init Gemma 4 text model with the E4B layer shapes (hidden 2560, MLP 10240, 8 query
heads x 256, 2 KV heads, per-layer inputs 256; fewer layers and a small vocabulary so it runs
on a CPU) gets random non-uniform norm weights and random unit directions, then the
`reference` and `norm_aware` edits of `refusal_ablation.edit` are applied in memory.

Two measurements, both as mean |x . d| over all tokens of random token sequences, edited
divided by baseline:

1. write leakage: x = what each write path adds to the residual stream (the output of its
   post-norm module, captured with a hook), d = that layer's own direction (independent
   random directions per layer).
2. residual leakage: x = the residual stream at each layer's output, with ONE shared
   direction for every layer (real per-layer refusal directions are highly aligned). The
   embedding is edited by neither method, so its component stays in both: `layer_output`
   is the whole stream, `layer_output_minus_embedding` what the layers wrote into it.

Norm weights are drawn from several spreads, because the leak scales with how non-uniform
the effective scale w is. Random weights are not the trained model's: the numbers show the
mechanism and its size for a given spread, not the leak of the released checkpoint.

Run: .venv/bin/python tools/measure_edit_leakage.py [--layers 6] [--out leakage.csv]

With ``--checkpoint`` it measures a real checkpoint instead (e.g. the refusal-tuned Gemma 3
270M of ``config/gemma3.yaml``) with its fitted directions: write leakage per layer and path
over every token of the construction prompts (chat-encoded as the workflow does), with each
post-norm's effective scale spread (coefficient of variation) beside it:

    .venv/bin/python tools/measure_edit_leakage.py --checkpoint resources/models/gemma-3-270m-refusal-tuned \
        --directions results/directions/refusal_directions.npz --split results/split/prompt_split.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from refusal_ablation.architecture import norm_scale, residual_writers  # noqa: E402
from refusal_ablation.edit import apply_edit, plan_edit  # noqa: E402

NORM_SPREADS = {
    "uniform(0.5,1.5)": lambda g, n: 0.5 + torch.rand(n, generator=g),
    "lognormal(sigma=0.5)": lambda g, n: torch.exp(0.5 * torch.randn(n, generator=g)),
    "lognormal(sigma=1.0)": lambda g, n: torch.exp(1.0 * torch.randn(n, generator=g)),
}


def build_model(layers: int, vocab: int, seed: int):
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    torch.manual_seed(seed)
    sliding_pattern = 5  # E4B: four sliding-window layers, then a full-attention one, repeated
    layer_types = ["full_attention" if (i + 1) % sliding_pattern == 0 else "sliding_attention" for i in range(layers)]
    layer_types[-1] = "full_attention"
    config = Gemma4TextConfig(
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,
        global_head_dim=512,
        hidden_size_per_layer_input=256,
        sliding_window=512,
        layer_types=layer_types,
        max_position_embeddings=4096,
    )
    return Gemma4ForCausalLM(config).eval()


def randomise_norms(model, spread, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if "norm" in type(module).__name__.lower() and weight is not None:
                weight.copy_(spread(generator, weight.numel()).reshape(weight.shape))


def run_and_capture(model, structure, input_ids):
    """Post-norm write outputs per (layer, kind) and layer outputs, float32, flattened over tokens."""
    writes, layer_out, hooks = {}, {}, []

    def keep(store, key):
        def hook(module, args, output):
            store[key] = (
                (output[0] if isinstance(output, tuple) else output).detach().float().reshape(-1, output.shape[-1])
            )

        return hook

    for index, writers in enumerate(structure.writers):
        for writer in writers:
            module = writer.norm if writer.norm is not None else writer.linear
            hooks.append(module.register_forward_hook(keep(writes, (index, writer.kind))))
    for index, layer in enumerate(structure.stack.layers):
        hooks.append(layer.register_forward_hook(keep(layer_out, index)))
    hooks.append(structure.stack.embedding.register_forward_hook(keep(layer_out, "embedding")))
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return writes, layer_out


def mean_abs(states: torch.Tensor, direction: np.ndarray) -> float:
    return float((states @ torch.as_tensor(direction)).abs().mean())


def measure_checkpoint(args) -> pd.DataFrame:
    """Write leakage of `reference` and `norm_aware` on a real checkpoint and its directions."""
    from refusal_ablation.directions import read_directions
    from refusal_ablation.loading import encode_chat, load_model
    from refusal_ablation.split import read_split

    started = time.monotonic()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.checkpoint, dtype="float32", device="cpu")
    structure = residual_writers(model)
    hidden = structure.stack.hidden_size
    directions = read_directions(args.directions)
    split = read_split(args.split)
    prompts = split.loc[split["split"] == "construction", "prompt"].tolist()[: args.prompts]
    encoded = encode_chat(tokenizer, prompts)
    writer_weights = {w.name: w.linear.weight.detach().clone() for writers in structure.writers for w in writers}

    def capture():
        totals: dict[tuple, list[float]] = {}
        for ids in encoded:
            writes, _ = run_and_capture(model, structure, torch.tensor([ids]))
            for (layer, kind), states in writes.items():
                d = torch.as_tensor(directions[layer])
                acc = totals.setdefault((layer, kind), [0.0, 0.0, 0])
                acc[0] += float((states @ d).abs().sum())
                acc[1] += float(states.norm(dim=-1).sum())
                acc[2] += states.shape[0]
        return {key: (along / n, norm / n) for key, (along, norm, n) in totals.items()}

    base = capture()
    print(
        f"baseline captured ({len(encoded)} prompts, {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True
    )
    rows = []
    for method in ("reference", "norm_aware"):
        with torch.no_grad():
            for writers in structure.writers:
                for w in writers:
                    w.linear.weight.copy_(writer_weights[w.name])
        apply_edit(plan_edit(model, directions, method))
        edited = capture()
        for (layer, kind), (before, norm) in base.items():
            writer = next(w for w in structure.writers[layer] if w.kind == kind)
            scale = norm_scale(writer.norm, hidden) if writer.norm is not None else torch.ones(hidden)
            rows.append(
                (
                    "checkpoint",
                    method,
                    "write",
                    layer,
                    kind,
                    before,
                    edited[(layer, kind)][0],
                    edited[(layer, kind)][0] / before,
                    norm,
                    float(scale.std() / scale.mean().abs()),
                )
            )
        print(f"{method}: done after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return pd.DataFrame(
        rows,
        columns=[
            "norm_weights",
            "method",
            "measure",
            "layer",
            "path",
            "baseline",
            "edited",
            "ratio",
            "baseline_mean_norm",
            "post_norm_scale_cv",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="measure this checkpoint (needs --directions, --split)"
    )
    parser.add_argument("--directions", type=Path, default=None)
    parser.add_argument("--split", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=None, help="first N construction prompts (default all)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2445)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.checkpoint is not None:
        if args.directions is None or args.split is None:
            parser.error("--checkpoint needs --directions and --split")
        frame = measure_checkpoint(args)
        if args.out:
            frame.to_csv(args.out, index=False)
        table = frame.pivot_table(index=["layer", "path"], columns="method", values="ratio")
        table["post_norm_scale_cv"] = frame.groupby(["layer", "path"])["post_norm_scale_cv"].first()
        print(table.to_string(float_format="{:.3g}".format))
        return

    started = time.monotonic()
    model = build_model(args.layers, args.vocab, args.seed)
    structure = residual_writers(model)
    hidden = structure.stack.hidden_size
    rng = np.random.default_rng(args.seed)
    input_ids = torch.as_tensor(rng.integers(3, args.vocab, size=(args.sequences, args.tokens)))
    independent = rng.normal(size=(args.layers, hidden)).astype(np.float32)
    independent /= np.linalg.norm(independent, axis=1, keepdims=True)
    shared = np.repeat(independent[:1], args.layers, axis=0)
    writer_weights = {w.name: w.linear.weight.detach().clone() for writers in structure.writers for w in writers}

    def restore():
        with torch.no_grad():
            for writers in structure.writers:
                for w in writers:
                    w.linear.weight.copy_(writer_weights[w.name])

    rows = []
    for spread_name, spread in NORM_SPREADS.items():
        restore()
        randomise_norms(model, spread, args.seed)
        base_writes, base_layers = run_and_capture(model, structure, input_ids)
        for method in ("reference", "norm_aware"):
            for directions, measure in ((independent, "write"), (shared, "residual")):
                restore()
                apply_edit(plan_edit(model, directions, method))
                writes, layers = run_and_capture(model, structure, input_ids)
                if measure == "write":
                    for (layer, kind), states in writes.items():
                        before = mean_abs(base_writes[(layer, kind)], directions[layer])
                        after = mean_abs(states, directions[layer])
                        rows.append((spread_name, method, measure, layer, kind, before, after, after / before))
                else:
                    for layer in range(args.layers):
                        for path, shift in (("layer_output", 0.0), ("layer_output_minus_embedding", 1.0)):
                            before = mean_abs(base_layers[layer] - shift * base_layers["embedding"], directions[layer])
                            after = mean_abs(layers[layer] - shift * layers["embedding"], directions[layer])
                            rows.append((spread_name, method, measure, layer, path, before, after, after / before))
        print(f"{spread_name}: done after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    frame = pd.DataFrame(
        rows,
        columns=["norm_weights", "method", "measure", "layer", "path", "baseline", "edited", "ratio"],
    )
    if args.out:
        frame.to_csv(args.out, index=False)
    summary = (
        frame.groupby(["norm_weights", "measure", "path", "method"])["ratio"]
        .agg(["median", "min", "max"])
        .unstack("method")
    )
    print(summary.to_string(float_format="{:.3g}".format))
    print(f"total {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
