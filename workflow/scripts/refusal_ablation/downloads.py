"""Everything the workflow fetches over the network, and the one message when that fails.

``download_file`` fetches a file by URL (the construction CSV, XSTest, the official
evaluator's files): written beside its target and renamed into place (``io.atomic_path``),
checked against its SHA-256 when one is given, so a failed or changed download never
leaves a file that looks complete.

The model (``prepare_model``), the benchmark (``benchmark_questions``) and the judge weights
(``download_judge``) come from the Hugging Face Hub, and fail for the same few reasons: no
network (or ``HF_HUB_OFFLINE`` set), no ``HF_TOKEN``, terms not accepted with the token's
account, a wrong repository or revision. ``hub_failure_message`` is the one message for
all of them: it names what was fetched, which of these reasons applies and the next step.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from pathlib import Path

from .io import atomic_path, verify_sha256

log = logging.getLogger(__name__)


def download_file(url: str, out_path: str | os.PathLike, sha256: str | None = None, hint: str = "") -> None:
    """Download ``url`` to ``out_path``; verified against ``sha256`` (when given) before it is
    moved in. ``hint`` (what to do instead) ends the message of a failed download."""
    with atomic_path(out_path) as tmp:
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=120) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh)
        except OSError as exc:
            raise RuntimeError(f"could not download {url}: {exc}" + (f"; {hint}" if hint else "")) from exc
        if sha256:
            verify_sha256(tmp, sha256)
        log.info("saved %s (%d bytes)", out_path, Path(tmp).stat().st_size)


class HubAccessError(RuntimeError):
    """A Hub download failed; the message says what was fetched, why, and what to do."""


class GatedAccessError(HubAccessError):
    """A Hub download failed because access to a gated repository is missing."""


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def hub_offline() -> bool:
    from huggingface_hub import constants

    set_here = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return set_here or bool(constants.HF_HUB_OFFLINE)


def failure_reason(exc: BaseException) -> str:
    """'gated', 'revision', 'not_found', 'offline' or 'other', from the exception and its causes."""
    from huggingface_hub import errors

    chain = _chain(exc)
    for e in chain:
        denied = _status(e) in (401, 403) and not isinstance(e, errors.RepositoryNotFoundError)
        if isinstance(e, errors.GatedRepoError) or denied:
            return "gated"
        if isinstance(e, errors.RevisionNotFoundError):
            return "revision"
        if isinstance(e, errors.RepositoryNotFoundError):
            return "not_found"
    offline_types = (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)
    try:
        import httpx

        offline_types += (httpx.TransportError,)
    except ImportError:  # pragma: no cover - huggingface_hub 1.x depends on httpx
        pass
    if hub_offline() or any(isinstance(e, offline_types) for e in chain):
        return "offline"
    return "other"


def hub_failure_message(
    exc: BaseException,
    what: str,
    repo_id: str,
    revision: str | None,
    token_set: bool,
    repo_type: str = "model",
    config_key: str | None = None,
) -> str:
    """The message of a failed download of ``what`` (e.g. 'the model') from ``repo_id``."""
    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    fetched = f"could not fetch {what} {repo_id} (revision {revision}) from the Hugging Face Hub"
    token_state = "HF_TOKEN is set" if token_set else "HF_TOKEN is not set"
    access = (
        f"accept its terms at {page} with your Hugging Face account, create a read token at "
        f"https://huggingface.co/settings/tokens and export HF_TOKEN=<token> before running snakemake"
    )
    key = f" (config {config_key})" if config_key else ""
    reason = failure_reason(exc)
    if reason == "gated":
        state = "HF_TOKEN is set but its account has no access (terms not accepted?)" if token_set else token_state
        return f"{fetched}: it is gated and {state}. To do: {access}, then rerun."
    if reason == "revision":
        return f"{fetched}: there is no such revision{key}. To do: check the revision against {page}/commits/main."
    if reason == "not_found":
        maybe = "" if token_set else f", or it is gated and {token_state}"
        return (
            f"{fetched}: the repository was not found{maybe}. To do: check the name{key}; if it is gated, "
            f"{access}, then rerun."
        )
    if reason == "offline":
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"no network connection ({type(_chain(exc)[-1]).__name__})"
        return (
            f"{fetched}: {why}, and it is not in the local cache. To do: run once with internet access to "
            f"huggingface.co (unset HF_HUB_OFFLINE); {token_state}; for a gated repository also {access}."
        )
    return (
        f"{fetched}: {type(exc).__name__}: {exc}. To do: check the network and {page}; {token_state}; "
        f"for a gated repository {access}."
    )
