"""Writing figures to disk: the one helper every figure of the workflow is saved with.

It imports only matplotlib, so the torch environment (``verify_edit``) uses it as well as
the stats environment. Files are written atomically, the format taken from the suffix, and
reruns on the same data give byte-identical SVG and PDF files (no creation date, a fixed salt
for the SVG element ids).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

from .io import atomic_path

logger = logging.getLogger(__name__)

SAVE_FORMATS = {".png", ".svg", ".pdf"}
SVG_HASHSALT = "refusal-ablation"


def save_figure(fig, paths: Sequence[str | os.PathLike], dpi: int = 150) -> None:
    """Write the figure to every path, format from the suffix, atomically; then close it."""
    import matplotlib.pyplot as plt

    if not paths:
        raise ValueError("no output path given for the figure")
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix not in SAVE_FORMATS:
            raise ValueError(f"{path}: figure format must be one of {sorted(SAVE_FORMATS)}")
        with atomic_path(path, suffix=suffix) as tmp, matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}):
            fig.savefig(tmp, format=suffix[1:], dpi=dpi, bbox_inches="tight", metadata=_metadata(suffix))
        logger.info("wrote %s", path)
    plt.close(fig)


def _metadata(suffix: str) -> dict:
    # No creation date, so that reruns on the same tables give the same files.
    return {"Date": None} if suffix in (".svg", ".pdf") else {}
