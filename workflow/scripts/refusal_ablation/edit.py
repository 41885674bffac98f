"""Remove refusal directions from a model's weights and save the edited checkpoint.

Methods (``edit_checkpoint(method=...)``):

- ``reference``: every decoder layer l, its own direction d_l, ``self_attn.o_proj`` and
  ``mlp.down_proj`` only: ``W <- (I - d d^T) W`` in float32, every column rescaled to its
  original L2 norm, cast back. This is the published experiment's edit, operation for
  operation.
- ``norm_aware``: every residual write path of the architecture (Gemma 4 includes
  ``per_layer_projection``). Where a norm with effective elementwise scale w sits between
  the matrix and the residual add (Gemma's sandwich norms), project against
  ``u = (w * d) / |w * d|`` instead of d: then ``d . (w * W'x) = |w * d| u . W'x = 0`` and the
  normalised write has no component along d. Without such a norm (Llama-style) u = d and
  the edit equals ``reference``.
- ``arditi``: one direction (the ``arditi_layer``'s, default the middle layer) removed from
  the input embedding and from every residual write matrix of every layer, without norm
  preservation (Arditi et al. 2024, "Refusal in language models is mediated by a single
  direction").

Every method also takes a variant's ``scale`` s (``W <- W - s d d^T W`` before the norm
restoration; 1.0 is the full edit, 0.0 changes nothing), ``layers`` (which decoder layers'
matrices are edited) and ``components`` (which write paths: ``attention``, ``mlp``,
``per_layer_input``, ``embedding``); see ``refusal_ablation.variants``.

The checkpoint is written to a temporary directory beside ``out_dir``, reloaded and checked
(no component along the edit direction, column norms kept where they should be) and only
then renamed into place, so a failed or wrong edit never looks like a finished output.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refusal_ablation.architecture import norm_scale, residual_writers
from refusal_ablation.directions import read_directions
from refusal_ablation.io import InputError, atomic_dir
from refusal_ablation.variants import METHOD_COMPONENTS, selected_layers

log = logging.getLogger(__name__)

METHODS = ("reference", "norm_aware", "arditi")
# A column whose norm drops below this fraction of its original lay (almost) along d.
COLLAPSE_RTOL = 1e-6
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")
CONFIG_FILE = "config.json"
BASE_PROVENANCE = "provenance.json"  # written by model_prep.prepare_model; describes the unedited model
EDIT_RECORD = "edit.json"


class EditError(RuntimeError):
    """The edit could not be applied, or the saved checkpoint does not hold it."""


def project_out(
    weight: torch.Tensor, direction, restore_norms: bool = True, name: str = "matrix", scale: float = 1.0
) -> torch.Tensor:
    """``(I - s d d^T) W`` for a ``[out, in]`` weight whose columns live in d's space.

    Computed in float32 and cast back to the weight's dtype. With ``restore_norms`` every
    column is rescaled to its original L2 norm; a non-zero column that collapses (it lay
    along d) raises, naming ``name`` and the columns. ``scale`` s = 1 is the full projection;
    s = 0 returns the weight unchanged, bit for bit.
    """
    weight32 = weight.detach().float()
    d = torch.as_tensor(direction, dtype=torch.float32, device=weight32.device).reshape(-1)
    if d.numel() != weight32.shape[0]:
        raise ValueError(f"{name}: direction has {d.numel()} entries, matrix output dimension is {weight32.shape[0]}")
    d_norm = torch.linalg.vector_norm(d)
    if not torch.isfinite(d_norm) or d_norm == 0:
        raise ValueError(f"{name}: direction is zero or not finite")
    d = d / d_norm
    along_d = d.unsqueeze(0) @ weight32  # [1, in]: each column's component along d
    if scale == 0:
        return weight.detach().clone()
    edited = weight32 - d.unsqueeze(1) @ (scale * along_d)
    if restore_norms:
        old_norms = torch.linalg.vector_norm(weight32, dim=0, keepdim=True)
        new_norms = torch.linalg.vector_norm(edited, dim=0, keepdim=True)
        collapsed = (old_norms > 0) & (new_norms <= COLLAPSE_RTOL * old_norms)
        if collapsed.any():
            columns = torch.nonzero(collapsed.squeeze(0)).flatten().tolist()
            raise EditError(
                f"{name}: column(s) {columns[:10]}{' ...' if len(columns) > 10 else ''} lie along the "
                "direction; removing it leaves nothing to rescale to the original norm"
            )
        zero = old_norms == 0
        scale = torch.where(zero, torch.ones_like(old_norms), old_norms / torch.where(zero, 1.0, new_norms))
        edited = edited * scale
    return edited.to(dtype=weight.dtype)


@dataclass
class PlannedEdit:
    name: str  # parameter path, e.g. "model.layers.3.self_attn.o_proj.weight"
    weight: nn.Parameter
    direction: torch.Tensor  # float32 unit vector in the hidden space
    restore_norms: bool
    rows_are_outputs: bool = False  # the embedding stores one written vector per row
    layer: int | None = None
    scale: float = 1.0
    original_along: torch.Tensor | None = None  # each column's component along d before the edit

    def expected_along(self, original_norms: torch.Tensor) -> torch.Tensor:
        """Each column's component along d that the edit must leave (0 for the full edit)."""
        if self.scale == 1 or self.original_along is None:
            return torch.zeros_like(original_norms)
        a = self.original_along
        kept = (1 - self.scale) * a
        if not self.restore_norms:
            return kept
        # the column w = a d + w_perp becomes c (w_perp + (1 - s) a d) with |.| = |w|
        shrunk = (original_norms.square() - a.square() + kept.square()).clamp_min(0).sqrt()
        return torch.where(shrunk > 0, kept * original_norms / shrunk.clamp_min(1e-30), kept)

    def output_major(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as [hidden, n]: one written vector per column."""
        weight = self.weight if weight is None else weight
        return weight.T if self.rows_are_outputs else weight


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / torch.linalg.vector_norm(vector)


def _arditi_layer(n_layers: int, arditi_layer: int | None) -> int:
    """The configured layer, or the middle one when the config leaves it null."""
    layer = n_layers // 2 if arditi_layer is None else int(arditi_layer)
    if not 0 <= layer < n_layers:
        raise ValueError(f"arditi_layer {arditi_layer} is outside 0..{n_layers - 1}")
    return layer


def plan_edit(
    model: nn.Module,
    directions: np.ndarray,
    method: str,
    restore_norms: bool = True,
    arditi_layer: int | None = None,
    source: str = "directions",
    scale: float = 1.0,
    layers="all",
    components=None,
) -> list[PlannedEdit]:
    """Which weights an edit method changes, and the unit vector each one loses.

    ``source`` names where ``directions`` came from, for error messages. ``layers`` and
    ``components`` restrict the method's matrices (see ``refusal_ablation.variants``);
    ``components=None`` is the method's own set.
    """
    if method not in METHODS:
        raise ValueError(f"unknown edit method {method!r}; known: {', '.join(METHODS)}")
    structure = residual_writers(model, trace_norms=(method == "norm_aware"))
    stack = structure.stack
    if directions.shape != (len(stack), stack.hidden_size):
        raise InputError(
            f"{source}: directions have shape {directions.shape}, the model has {len(stack)} decoder layers "
            f"of hidden size {stack.hidden_size} ({stack.layers_name})"
        )
    wanted = set(components or METHOD_COMPONENTS[method])
    chosen_layers = set(selected_layers(layers, len(stack)))
    per_layer = [_unit(torch.as_tensor(row, dtype=torch.float32)) for row in directions]
    if method == "arditi":
        chosen = _arditi_layer(len(stack), arditi_layer)
        log.info("arditi edit: direction of layer %d removed everywhere", chosen)
        per_layer = [per_layer[chosen]] * len(per_layer)
    # the reference and arditi edits keep their published norm handling
    keep_norms = {"reference": True, "norm_aware": restore_norms, "arditi": False}[method]
    plan: list[PlannedEdit] = []
    if "embedding" in wanted:
        # what the embedding writes enters before layer 0, so it loses layer 0's direction
        plan.append(
            PlannedEdit(
                f"{stack.embedding_name}.weight",
                stack.embedding.weight,
                per_layer[0],
                keep_norms,
                rows_are_outputs=True,
                scale=scale,
            )
        )
    for writers in structure.writers:
        for writer in writers:
            if writer.kind not in wanted or writer.layer not in chosen_layers:
                continue
            d = per_layer[writer.layer]
            if method == "norm_aware" and writer.norm is not None:
                w = norm_scale(writer.norm, stack.hidden_size, writer.norm_name).cpu()
                scaled = w * d
                if torch.linalg.vector_norm(scaled) == 0:
                    raise EditError(f"{writer.norm_name}: scale is zero wherever the direction is not")
                d = _unit(scaled)
            plan.append(
                PlannedEdit(
                    f"{writer.name}.weight", writer.linear.weight, d, keep_norms, layer=writer.layer, scale=scale
                )
            )
    if not plan:
        raise EditError(
            f"{method} edit with components {sorted(wanted)} on layers {layers!r} "
            "selects no weight matrix of this model"
        )
    return plan


def apply_edit(plan: list[PlannedEdit]) -> dict[str, torch.Tensor]:
    """Edit the planned weights in place; return each one's original column norms (float32, CPU)."""
    original_norms = {}
    last_layer = None
    with torch.no_grad():
        for item in plan:
            if item.layer != last_layer and item.layer is not None:
                log.info("editing decoder layer %d", item.layer)
                last_layer = item.layer
            outputs = item.output_major()
            original_norms[item.name] = torch.linalg.vector_norm(outputs.float(), dim=0).cpu()
            direction = item.direction.to(outputs.device)
            item.original_along = (direction.unsqueeze(0) @ outputs.detach().float()).squeeze(0).cpu()
            edited = project_out(outputs, direction, item.restore_norms, item.name, item.scale)
            item.weight.copy_(edited.T if item.rows_are_outputs else edited)
    return original_norms


def check_edit(plan: list[PlannedEdit], original_norms: dict[str, torch.Tensor]) -> None:
    """Raise unless every planned weight has the component along its direction that the edit
    leaves (none for the full edit; ``(1 - s)`` of it, rescaled, for a scale s) and kept norms.

    Tolerances follow the storage dtype: a value rounded to unit roundoff r changes
    ``u . w`` by at most ``r * sum_i |u_i w_i|`` and a column norm by at most ``r`` relative.
    """
    problems = []
    for item in plan:
        outputs = item.output_major().detach().float()
        u = item.direction.to(outputs.device)
        roundoff = torch.finfo(item.weight.dtype).eps / 2
        norms = torch.linalg.vector_norm(outputs, dim=0)
        expected = item.expected_along(original_norms[item.name].to(norms.device)).to(norms.device)
        along = ((u.unsqueeze(0) @ outputs).squeeze(0) - expected).abs()
        bound = 2 * roundoff * (u.abs().unsqueeze(0) @ outputs.abs()).squeeze(0) + 1e-5 * norms
        worst = int(torch.argmax(along - bound))
        if along[worst] > bound[worst]:
            problems.append(
                f"{item.name}: column {worst} keeps a component {along[worst]:.3g} along the edit "
                f"direction beyond the {float(expected[worst]):.3g} the edit leaves "
                f"(column norm {norms[worst]:.3g}, allowed {bound[worst]:.3g})"
            )
        if item.restore_norms:
            before = original_norms[item.name].to(norms.device)
            drift = ((norms - before).abs() / before.clamp_min(1e-30)).max()
            if drift > 2 * roundoff + 1e-5:
                problems.append(f"{item.name}: column norms changed by up to {float(drift):.3g} (relative)")
    if problems:
        raise EditError("edited checkpoint does not hold the edit:\n" + "\n".join(problems[:20]))


def checkpoint_dtype(model_dir: str | os.PathLike) -> str:
    """The dtype the checkpoint's config declares (float32 when it declares none)."""
    import json

    config_path = Path(model_dir) / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{config_path}: cannot read the model config ({exc})") from None
    for holder in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if holder.get(key):
                return str(holder[key]).removeprefix("torch.")
    return "float32"


def load_checkpoint(model_dir: str | os.PathLike):
    """The checkpoint's full model (multimodal parts included) in its own dtype, on CPU."""
    from refusal_ablation.loading import load_model

    model, _ = load_model(model_dir, dtype=checkpoint_dtype(model_dir), device="cpu")
    return model


def _copy_side_files(model_dir: Path, out_dir: Path) -> None:
    """Tokenizer, chat template, generation config etc.: everything but weights, config and provenance."""
    for source in sorted(model_dir.iterdir()):
        if not source.is_file() or source.name in (CONFIG_FILE, EDIT_RECORD, BASE_PROVENANCE):
            continue
        if source.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copy2(source, out_dir / source.name)


def _write_edit_record(model_dir: Path, directions_npz, out_dir: Path, record: dict) -> None:
    """What was done to which checkpoint, beside the edited weights."""
    import json

    from refusal_ablation.io import sha256_file

    base_provenance = model_dir / BASE_PROVENANCE
    record = {
        "base_model": str(model_dir),
        "base_provenance": json.loads(base_provenance.read_text()) if base_provenance.is_file() else None,
        "directions": str(directions_npz),
        "directions_sha256": sha256_file(directions_npz),
        **record,
    }
    (out_dir / EDIT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def edit_checkpoint(
    model_dir: str | os.PathLike,
    directions_npz: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str,
    restore_norms: bool = True,
    arditi_layer: int | None = None,
    scale: float = 1.0,
    layers="all",
    components=None,
) -> None:
    """Edit ``model_dir`` with ``method``, save to ``out_dir`` (safetensors), reload and check.

    ``scale``, ``layers`` and ``components`` are an edit variant's (``refusal_ablation.variants``).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if method not in METHODS:
        raise ValueError(f"unknown edit method {method!r}; known: {', '.join(METHODS)}")
    if method == "reference" and not restore_norms:
        log.warning("the reference edit always restores column norms (as published); restore_norms=False ignored")
    directions = read_directions(directions_npz)
    log.info("loading %s", model_dir)
    model = load_checkpoint(model_dir)
    variant = {"scale": scale, "layers": layers, "components": components}
    plan = plan_edit(model, directions, method, restore_norms, arditi_layer, str(directions_npz), **variant)
    log.info(
        "%s edit: %d weight matrices (restore_norms=%s, scale=%g, layers=%s)",
        method,
        len(plan),
        plan[-1].restore_norms,
        scale,
        layers,
    )
    original_norms = apply_edit(plan)
    check_edit(plan, original_norms)
    original_along = {item.name: item.original_along for item in plan}

    with atomic_dir(out_dir) as tmp_dir:
        log.info("saving to %s", tmp_dir)
        model.save_pretrained(tmp_dir)
        _copy_side_files(model_dir, tmp_dir)
        _write_edit_record(
            model_dir,
            directions_npz,
            tmp_dir,
            {
                "method": method,
                "restore_norms": plan[-1].restore_norms,
                "arditi_layer": _arditi_layer(len(directions), arditi_layer) if method == "arditi" else None,
                "scale": scale,
                "layers": sorted({item.layer for item in plan if item.layer is not None}),
                "edited_weights": [item.name for item in plan],
            },
        )
        del model, plan
        gc.collect()

        log.info("reloading the saved checkpoint to check the edit")
        reloaded = load_checkpoint(tmp_dir)
        reloaded_plan = plan_edit(
            reloaded, directions, method, restore_norms, arditi_layer, str(directions_npz), **variant
        )
        for item in reloaded_plan:
            item.original_along = original_along[item.name]
        check_edit(reloaded_plan, original_norms)
        del reloaded, reloaded_plan
        gc.collect()
    log.info("edited checkpoint written to %s", out_dir)
