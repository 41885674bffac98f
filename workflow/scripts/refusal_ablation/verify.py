"""Does an edit remove the direction from the residual stream? Measured, not assumed.

The construction prompts (``split == construction``) run through the baseline and the
edited model, and two vectors x per decoder layer l are projected on that layer's unit
direction d_l:

- ``residual_stream``: the residual stream at the output of layer l (a forward hook on the
  layer module: the state after its last residual add, before any final norm). It also
  carries what the embedding and the earlier layers wrote, so it goes to zero only when
  those are edited too (or their directions are aligned with d_l).
- ``layer_writes``: what layer l itself adds to the stream, i.e. the sum of its residual
  write paths as they reach the add (after Gemma's post-norms, found by
  ``architecture.residual_writers``). This is the edit's direct effect.

Two positions: ``last_prompt_token`` (the state the directions were fit on) and
``all_prompt_tokens`` (every non-padding prompt token, averaged per prompt first).

For each measure, layer, label (safe/unsafe) and position the table gives the mean over
prompts of |x . d_l| for both models, its ratio edited / baseline, and the mean norm |x|
for scale. A ratio near 0 means the edit removed the direction there; near 1, not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from refusal_ablation.directions import read_directions
from refusal_ablation.io import InputError
from refusal_ablation.loading import encode_chat, load_model
from refusal_ablation.prefix import left_padded_batch
from refusal_ablation.runtime import RateLogger
from refusal_ablation.split import CONSTRUCTION, LABELS, split_rows

log = logging.getLogger(__name__)

POSITIONS = ("last_prompt_token", "all_prompt_tokens")
MEASURES = ("residual_stream", "layer_writes")
PROJECTION_COLUMNS = [
    "measure",
    "layer",
    "label",
    "tokens",
    "n_prompts",
    "baseline_mean_abs_projection",
    "edited_mean_abs_projection",
    "ratio_edited_to_baseline",
    "baseline_mean_norm",
    "edited_mean_norm",
]


def layer_projections(
    model, tokenizer, prompts: Sequence[str], directions: np.ndarray, batch_size: int, source: str = "directions"
) -> dict[tuple[str, str, str], np.ndarray]:
    """Per prompt and layer, keyed (measure, "proj" | "norm", position): |x . d_l| and |x|."""
    import torch

    from refusal_ablation.architecture import accepts_logits_to_keep, residual_writers

    structure = residual_writers(model)
    stack = structure.stack
    if directions.shape != (len(stack), stack.hidden_size):
        raise InputError(
            f"{source}: directions have shape {directions.shape}, the model has {len(stack)} layers of hidden size "
            f"{stack.hidden_size}"
        )
    device = next(model.parameters()).device
    units = torch.as_tensor(directions / np.linalg.norm(directions, axis=1, keepdims=True), dtype=torch.float32)
    units = units.to(device)
    encoded = encode_chat(tokenizer, list(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n, layers = len(prompts), len(stack)
    result = {
        (measure, kind, pos): np.zeros((n, layers), dtype=np.float64)
        for measure in MEASURES
        for kind in ("proj", "norm")
        for pos in POSITIONS
    }
    captured: dict[str, list] = {measure: [None] * layers for measure in MEASURES}

    def keep_output(index):
        def hook(module, args, output):
            captured["residual_stream"][index] = (output[0] if isinstance(output, tuple) else output).float()

        return hook

    def add_write(index):
        def hook(module, args, output):
            previous = captured["layer_writes"][index]
            captured["layer_writes"][index] = output.float() if previous is None else previous + output.float()

        return hook

    hooks = [layer.register_forward_hook(keep_output(i)) for i, layer in enumerate(stack.layers)]
    for writers in structure.writers:
        for writer in writers:
            # what reaches the residual add: the post-norm's output where there is one
            module = writer.norm if writer.norm is not None else writer.linear
            hooks.append(module.register_forward_hook(add_write(writer.layer)))
    order = sorted(range(n), key=lambda i: len(encoded[i]))
    extra = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    progress = RateLogger(log, n, "prompts")
    try:
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            input_ids, mask, positions = left_padded_batch([encoded[i] for i in batch], pad_id)
            captured["layer_writes"] = [None] * layers
            with torch.inference_mode():
                # the hooks read everything needed; logits of one position are the cheapest to skip computing
                model(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    use_cache=False,
                    **extra,
                )
            valid = mask.to(device).float()
            count = valid.sum(dim=1)
            for measure in MEASURES:
                for layer in range(layers):
                    states = captured[measure][layer]  # [batch, width, hidden], float32
                    along = (states @ units[layer]).abs()
                    norms = torch.linalg.vector_norm(states, dim=-1)
                    for kind, values in (("proj", along), ("norm", norms)):
                        last = values[:, -1]  # left padding: the last column is every prompt's last token
                        mean_all = (values * valid).sum(dim=1) / count
                        result[measure, kind, "last_prompt_token"][batch, layer] = last.cpu().double().numpy()
                        result[measure, kind, "all_prompt_tokens"][batch, layer] = mean_all.cpu().double().numpy()
            progress.update(len(batch))
    finally:
        for hook in hooks:
            hook.remove()
    return result


def residual_projection(
    model_dir_baseline: str | os.PathLike,
    model_dir_edited: str | os.PathLike,
    directions_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    batch_size: int = 8,
    device: str = "auto",
    threads: int | None = None,
    prompts_per_label_per_area: int | None = None,
) -> pd.DataFrame:
    """Per measure, layer, label and position: mean |x . d_l| before and after the edit, and the ratio."""
    import gc

    prompts = split_rows(split_csv, CONSTRUCTION, prompts_per_label_per_area)
    directions = read_directions(directions_npz)
    measured = {}
    for condition, model_dir in (("baseline", model_dir_baseline), ("edited", model_dir_edited)):
        log.info("%s: %d construction prompts through %s", condition, len(prompts), model_dir)
        model, tokenizer = load_model(model_dir, dtype="auto", device=device, threads=threads)
        measured[condition] = layer_projections(
            model, tokenizer, prompts["prompt"].tolist(), directions, batch_size, str(directions_npz)
        )
        del model
        gc.collect()

    rows = []
    for measure in MEASURES:
        for label in LABELS:
            selected = (prompts["label"] == label).to_numpy()
            if not selected.any():
                continue
            for position in POSITIONS:
                mean = {
                    (condition, kind): measured[condition][measure, kind, position][selected].mean(axis=0)
                    for condition in ("baseline", "edited")
                    for kind in ("proj", "norm")
                }
                for layer in range(len(directions)):
                    base, edit = mean["baseline", "proj"][layer], mean["edited", "proj"][layer]
                    rows.append(
                        {
                            "measure": measure,
                            "layer": layer,
                            "label": label,
                            "tokens": position,
                            "n_prompts": int(selected.sum()),
                            "baseline_mean_abs_projection": base,
                            "edited_mean_abs_projection": edit,
                            "ratio_edited_to_baseline": edit / base if base > 0 else np.nan,
                            "baseline_mean_norm": mean["baseline", "norm"][layer],
                            "edited_mean_norm": mean["edited", "norm"][layer],
                        }
                    )
    return pd.DataFrame(rows, columns=PROJECTION_COLUMNS)


MEASURE_AXIS = {
    "residual_stream": "mean |h · d|, layer output",
    "layer_writes": "mean |write · d|, layer's own writes",
}


def plot_residual_projection(frame: pd.DataFrame, png: str | os.PathLike, title: str | None = None) -> None:
    """Residual component along d, before and after, per layer.

    Rows: measure x token position; columns: safe / unsafe prompts. Log scale, so an edit
    that removes the direction to float precision shows as a drop of several decades.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from refusal_ablation.figure_files import save_figure

    labels = [label for label in LABELS if (frame["label"] == label).any()]
    panels = [
        (measure, position)
        for measure in MEASURES
        for position in POSITIONS
        if ((frame["measure"] == measure) & (frame["tokens"] == position)).any()
    ]
    fig, axes = plt.subplots(
        len(panels), len(labels), figsize=(5.2 * len(labels), 3.0 * len(panels)), squeeze=False, sharex=True
    )
    for r, (measure, position) in enumerate(panels):
        for c, label in enumerate(labels):
            ax = axes[r][c]
            part = frame[
                (frame["measure"] == measure) & (frame["tokens"] == position) & (frame["label"] == label)
            ].sort_values("layer")
            ax.plot(part["layer"], part["baseline_mean_abs_projection"], marker="o", ms=3, label="baseline")
            ax.plot(part["layer"], part["edited_mean_abs_projection"], marker="s", ms=3, ls="--", label="edited")
            values = part[["baseline_mean_abs_projection", "edited_mean_abs_projection"]].to_numpy()
            if (values > 0).all():
                ax.set_yscale("log")
            ax.set_title(f"{measure.replace('_', ' ')}: {label} prompts, {position.replace('_', ' ')}", fontsize=10)
            ax.set_ylabel(MEASURE_AXIS[measure], fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if r == len(panels) - 1:
                ax.set_xlabel("decoder layer")
    axes[0][0].legend(loc="best", fontsize=9)
    fig.suptitle(title or "Residual component along d, before and after, per layer")
    fig.tight_layout()
    save_figure(fig, [png], dpi=120)


def run_verify_edit(
    baseline_model: str | os.PathLike,
    edited_model: str | os.PathLike,
    directions_npz: str | os.PathLike,
    split_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    edit: str,
    batch_size: int = 8,
    device: str = "auto",
    threads: int | None = None,
    prompts_per_label_per_area: int | None = None,
) -> pd.DataFrame:
    from refusal_ablation.io import write_csv

    frame = residual_projection(
        baseline_model, edited_model, directions_npz, split_csv, batch_size, device, threads, prompts_per_label_per_area
    )
    write_csv(out_csv, frame)
    for measure, part in frame[frame["tokens"] == "last_prompt_token"].groupby("measure"):
        log.info(
            "%s edit, %s: median ratio edited/baseline at the last prompt token %.3g (safe), %.3g (unsafe)",
            edit,
            measure,
            part[part["label"] == "safe"]["ratio_edited_to_baseline"].median(),
            part[part["label"] == "unsafe"]["ratio_edited_to_baseline"].median(),
        )
    plot_residual_projection(frame, out_png, f"Residual component along d, before and after, per layer ({edit} edit)")
    return frame
