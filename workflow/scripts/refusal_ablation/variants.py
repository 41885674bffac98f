"""Named edit variants: which method, how strongly, on which layers and which write paths.

The config can name edits three ways, all of which end up as one dict ``name -> variant``:

- ``edit.methods: [reference, norm_aware]``: one variant per method, at full strength on
  every layer and the method's own write paths (the first version's behaviour; the
  variant's name is the method's name, so existing result paths stay as they were);
- ``edit.variants: {norm_aware_half: {method: norm_aware, scale: 0.5}}``: named variants;
- ``edit.sweep: {method: [reference, norm_aware], scale: [0.5, 1.0], layers: [all]}``: a
  grid, one variant per combination, named ``<method>_s<scale x 100, 3 digits>`` plus
  ``_L<band>`` when ``layers`` is swept, e.g. ``norm_aware_s050``.

A variant is ``{method, scale, layers, components}``:

- ``scale`` s: ``W <- W - s d d^T W`` before any norm restoration; 1.0 is the full edit,
  0.0 leaves the weights untouched;
- ``layers``: ``all``, a band ``first_third`` / ``middle_third`` / ``last_third``, an
  inclusive range ``"A-B"``, or a list of layer indices;
- ``components``: a subset of ``attention``, ``mlp``, ``per_layer_input``, ``embedding``,
  or ``null`` for the method's own set (reference: attention and MLP; norm_aware: every
  residual write path; arditi: every write path and the embedding).
"""

from __future__ import annotations

import itertools
import re

METHODS = ("reference", "norm_aware", "arditi")
COMPONENTS = ("attention", "mlp", "per_layer_input", "embedding")
METHOD_COMPONENTS = {
    "reference": ("attention", "mlp"),
    "norm_aware": ("attention", "mlp", "per_layer_input"),
    "arditi": ("embedding", "attention", "mlp", "per_layer_input"),
}
BANDS = ("all", "first_third", "middle_third", "last_third")
NAME = re.compile(r"^[A-Za-z0-9_]+$")
RANGE = re.compile(r"^(\d+)-(\d+)$")
DEFAULTS = {"scale": 1.0, "layers": "all", "components": None}


class VariantError(ValueError):
    """An edit variant in the config is not well formed (the message names the config key)."""


def _check_layers(layers, where: str):
    if isinstance(layers, str):
        if layers in BANDS or RANGE.match(layers):
            if RANGE.match(layers):
                start, stop = map(int, RANGE.match(layers).groups())
                if stop < start:
                    raise VariantError(f"{where}: layer range {layers!r} ends before it starts")
            return layers
        raise VariantError(
            f"{where}: layers must be one of {', '.join(BANDS)}, 'A-B' or a list of ints, got {layers!r}"
        )
    if isinstance(layers, list) and layers and all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        if min(layers) < 0:
            raise VariantError(f"{where}: layer indices must be >= 0, got {layers}")
        return sorted(set(layers))
    raise VariantError(f"{where}: layers must be one of {', '.join(BANDS)}, 'A-B' or a non-empty list of ints")


def normalise_variant(raw: dict, where: str) -> dict:
    """A variant with every key filled in and checked; ``where`` names its config key."""
    if not isinstance(raw, dict):
        raise VariantError(f"{where}: a variant is a mapping with at least 'method', got {raw!r}")
    unknown = set(raw) - {"method", *DEFAULTS}
    if unknown:
        raise VariantError(f"{where}: unknown key(s) {sorted(unknown)}; known: method, {', '.join(DEFAULTS)}")
    method = raw.get("method")
    if method not in METHODS:
        raise VariantError(f"{where}.method: must be one of {', '.join(METHODS)}, got {method!r}")
    scale = raw.get("scale", DEFAULTS["scale"])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 4:
        raise VariantError(f"{where}.scale: must be a number in [0, 4], got {scale!r}")
    components = raw.get("components", DEFAULTS["components"])
    if components is not None:
        if not isinstance(components, list) or not components or set(components) - set(COMPONENTS):
            raise VariantError(f"{where}.components: a non-empty list of {', '.join(COMPONENTS)}, got {components!r}")
        components = [c for c in COMPONENTS if c in components]
    return {
        "method": method,
        "scale": float(scale),
        "layers": _check_layers(raw.get("layers", DEFAULTS["layers"]), f"{where}.layers"),
        "components": components,
    }


def sweep_name(method: str, scale: float, layers=None) -> str:
    name = f"{method}_s{round(scale * 100):03d}"
    if layers is not None:
        name += "_L" + (layers.replace("-", "to") if isinstance(layers, str) else "_".join(map(str, layers)))
    return name


def edit_variants(edit_config: dict) -> dict[str, dict]:
    """Every edit variant the config asks for, in config order: methods, variants, sweep."""
    variants: dict[str, dict] = {}

    def add(name: str, variant: dict, where: str):
        if not NAME.match(name):
            raise VariantError(f"{where}: variant name {name!r} may hold only letters, digits and '_'")
        if name in variants:
            raise VariantError(
                f"{where}: variant name {name!r} is defined twice (edit.methods, edit.variants, edit.sweep)"
            )
        variants[name] = variant

    for method in edit_config.get("methods") or []:
        add(method, normalise_variant({"method": method}, f"edit.methods[{method}]"), "edit.methods")
    for name, raw in (edit_config.get("variants") or {}).items():
        add(str(name), normalise_variant(raw, f"edit.variants.{name}"), f"edit.variants.{name}")
    sweep = edit_config.get("sweep")
    if sweep:
        unknown = set(sweep) - {"method", "scale", "layers"}
        if unknown or "method" not in sweep or "scale" not in sweep:
            raise VariantError(
                f"edit.sweep: needs lists 'method' and 'scale' (optional 'layers'); got keys {sorted(sweep)}"
            )
        for key in sweep:
            if not isinstance(sweep[key], list) or not sweep[key]:
                raise VariantError(f"edit.sweep.{key}: must be a non-empty list")
        layer_values = sweep.get("layers")
        for method, scale, layers in itertools.product(sweep["method"], sweep["scale"], layer_values or [None]):
            raw = {"method": method, "scale": scale}
            if layers is not None:
                raw["layers"] = layers
            variant = normalise_variant(raw, "edit.sweep")
            add(
                sweep_name(method, variant["scale"], variant["layers"] if layers is not None else None),
                variant,
                "edit.sweep",
            )
    if not variants:
        raise VariantError("edit: no edit configured; set edit.methods, edit.variants or edit.sweep")
    return variants


def selected_layers(layers, n_layers: int) -> list[int]:
    """The layer indices a variant's ``layers`` names for a model with ``n_layers`` layers."""
    if layers == "all":
        return list(range(n_layers))
    if isinstance(layers, str) and layers.endswith("_third"):
        cut = [round(i * n_layers / 3) for i in range(4)]
        part = ("first_third", "middle_third", "last_third").index(layers)
        return list(range(cut[part], cut[part + 1]))
    if isinstance(layers, str):
        start, stop = map(int, RANGE.match(layers).groups())
        chosen = list(range(start, stop + 1))
    else:
        chosen = list(layers)
    outside = [layer for layer in chosen if layer >= n_layers]
    if outside:
        raise VariantError(f"layers {layers!r}: layer(s) {outside} do not exist (the model has {n_layers} layers)")
    return chosen


def variant_components(variant: dict) -> tuple[str, ...]:
    return tuple(variant["components"] or METHOD_COMPONENTS[variant["method"]])
