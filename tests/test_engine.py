"""The generation engine returns, token for token, what model.generate greedy returns.

Tiny random float32 models on the CPU: Llama, Gemma 3 (sliding-window layers), the
multimodal Gemma 4 wrapper, and a Gemma 4 with KV-shared layers whose answers run past
the sliding window, so the ring buffer wraps. The reference is ``model.generate`` with
``do_sample=False`` on each prompt alone.
"""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma4Config, Gemma4ForConditionalGeneration

from refusal_ablation.engine import Finished, _SlotDecoder, continuous_unsupported_reason, iter_greedy
from tiny_models import build_tiny_gemma3, build_tiny_gemma4, build_tiny_llama

PROMPT_LENGTHS = (5, 9, 23, 3, 30, 7, 12)
CAPS = (30, 17, 1, 25, 12, 40, 6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny matrices: threads only add contention on a shared CI machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sharpen(model):
    # random init gives near-flat logits; widening them keeps argmax away from rounding-level ties
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(6.0)
    return model.eval()


def _gemma4_shared_kv(sliding_window=8):
    """Gemma 4 with KV-shared layers, head dim 32 on full layers, window 8 (E4B's layout, shrunk)."""
    text = dict(
        vocab_size=96,
        vocab_size_per_layer_input=96,
        hidden_size_per_layer_input=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        sliding_window=sliding_window,
        num_kv_shared_layers=2,
        final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"] * 3,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=None, audio_config=None))


@pytest.fixture(scope="module", params=["llama", "gemma3", "gemma4", "gemma4_shared_kv"])
def tiny_model(request, tmp_path_factory):
    if request.param == "gemma4_shared_kv":
        model = _gemma4_shared_kv()
    else:
        builder = {"llama": build_tiny_llama, "gemma3": build_tiny_gemma3, "gemma4": build_tiny_gemma4}[request.param]
        path = builder(tmp_path_factory.mktemp(request.param))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return request.param, _sharpen(model)


def _prompts(model, seed=0):
    vocab = model.get_output_embeddings().weight.shape[0]
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in PROMPT_LENGTHS]


def _reference(model, prompts, caps, stop_ids):
    """model.generate greedy on each prompt alone, cut at the first stop id."""
    answers = []
    for prompt, cap in zip(prompts, caps):
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=cap,
            do_sample=False,
            eos_token_id=list(stop_ids) or None,
            pad_token_id=0,
        )
        tokens = out[0, len(prompt) :].tolist()
        stop = next((k for k, t in enumerate(tokens) if t in stop_ids), None)
        answers.append((tokens[:stop], False) if stop is not None else (tokens, len(tokens) >= cap))
    return answers


def _run(model, prompts, caps, stop_ids, **kwargs):
    results = list(iter_greedy(model, prompts, caps, stop_ids, 0, **kwargs))
    assert sorted(r.index for r in results) == list(range(len(prompts)))
    return {r.index: (r.tokens, r.hit_limit) for r in results}


def test_engine_supports_tiny_models(tiny_model):
    name, model = tiny_model
    assert continuous_unsupported_reason(model) is None, name


@pytest.mark.parametrize("batch_size", [3, 7])
def test_continuous_matches_generate_token_for_token(tiny_model, batch_size):
    name, model = tiny_model
    prompts = _prompts(model)
    free_run = _reference(model, prompts, CAPS, [])
    # a stop id the model really emits mid-answer, so stopping is exercised
    stop_id = next(tokens[3] for tokens, _ in free_run if len(tokens) > 3)
    expected = _reference(model, prompts, CAPS, [stop_id])
    assert any(not hit for _, hit in expected) and any(hit for _, hit in expected)
    got = _run(model, prompts, CAPS, [stop_id], batch_size=batch_size, engine="continuous")
    for i in range(len(prompts)):
        assert got[i] == expected[i], f"{name}, prompt {i}"


def test_generate_engine_matches_reference(tiny_model):
    name, model = tiny_model
    prompts = _prompts(model, seed=1)[:3]
    caps = CAPS[:3]
    expected = _reference(model, prompts, caps, [])
    got = _run(model, prompts, caps, [], batch_size=1, engine="generate")
    assert [got[i] for i in range(3)] == expected, name


def test_answers_do_not_depend_on_batch_size():
    model = _sharpen(_gemma4_shared_kv())
    prompts = _prompts(model, seed=2)
    caps = [20 + 3 * i for i in range(len(prompts))]
    runs = [_run(model, prompts, caps, [1], batch_size=size, engine="continuous") for size in (1, 2, 5)]
    assert runs[0] == runs[1] == runs[2]


def test_results_come_in_finishing_order():
    model = _sharpen(_gemma4_shared_kv())
    prompts = _prompts(model, seed=3)
    caps = [9, 2, 14, 5, 11, 3, 7]
    order = [r.index for r in iter_greedy(model, prompts, caps, [], 0, batch_size=len(prompts))]
    assert [caps[i] for i in order] == sorted(caps)
    assert all(
        len(r.tokens) == caps[r.index] and r.hit_limit for r in iter_greedy(model, prompts, caps, [], 0, batch_size=2)
    )


def test_caller_code_between_answers_runs_outside_inference_mode():
    model = _sharpen(_gemma4_shared_kv())
    answers = iter_greedy(model, _prompts(model, seed=6)[:3], [4, 9, 2], [], 0, batch_size=2)
    next(answers)
    assert not torch.is_inference_mode_enabled()
    assert len(list(answers)) == 2


def test_edge_caps_and_immediate_stop():
    model = _sharpen(_gemma4_shared_kv())
    prompts = _prompts(model, seed=4)[:3]
    first = [tokens[0] for tokens, _ in _reference(model, prompts, [1, 1, 1], [])]
    got = _run(model, prompts, [0, 1, 5], [], batch_size=3)
    assert got[0] == ([], True)
    assert got[1] == ([first[1]], True)
    # a prompt whose first answer token is a stop id gets an empty, not truncated, answer
    got = _run(model, prompts[2:], [5], [first[2]], batch_size=1)
    assert got[0] == ([], False)


def test_auto_falls_back_when_generation_config_changes_greedy():
    model = _sharpen(_gemma4_shared_kv())
    model.generation_config.repetition_penalty = 1.3
    assert "repetition_penalty" in continuous_unsupported_reason(model)
    with pytest.raises(ValueError, match="repetition_penalty"):
        list(iter_greedy(model, [[5, 6]], [3], [], 0, engine="continuous"))
    result = list(iter_greedy(model, [[5, 6]], [3], [], 0, engine="auto"))
    assert isinstance(result[0], Finished) and len(result[0].tokens) == 3


@pytest.mark.parametrize(
    "prompts, caps, kwargs, message",
    [
        ([[5, 6]], [3, 4], {}, "2 max_new_tokens"),
        ([[5, 6], []], [3, 4], {}, "prompt 1 has no tokens"),
        ([[5, 6]], [-1], {}, r"max_new_tokens\[0\]"),
        ([[5, 6]], [3], {"engine": "vllm"}, "engine must be"),
        ([[5, 6]], [3], {"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_named(prompts, caps, kwargs, message):
    model = _gemma4_shared_kv()
    with pytest.raises(ValueError, match=message):
        list(iter_greedy(model, prompts, caps, [], 0, **kwargs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_engine_matches_generate_on_gpu():
    model = _sharpen(_gemma4_shared_kv()).to("cuda")
    prompts = _prompts(model, seed=5)
    expected = _reference(model, prompts, CAPS, [])
    decoder = _SlotDecoder(model, prompts, list(CAPS), [], 0, 3, cuda_graphs=True)
    got = {r.index: (r.tokens, r.hit_limit) for r in decoder.run()}
    assert decoder.graphs, "no CUDA graph was captured"
    assert [got[i] for i in range(len(prompts))] == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_engine_with_a_shared_prefix_matches_generate_on_gpu():
    model = _sharpen(_gemma4_shared_kv(sliding_window=64)).to("cuda")
    preamble = [random.Random(9).randrange(3, 96) for _ in range(12)]
    prompts = [preamble + tokens for tokens in _prompts(model, seed=5)]
    expected = _reference(model, prompts, CAPS, [])
    decoder = _SlotDecoder(model, prompts, list(CAPS), [], 0, 3, cuda_graphs=True)
    got = {r.index: (r.tokens, r.hit_limit) for r in decoder.run()}
    assert decoder.graphs and decoder.shared is not None
    assert [got[i] for i in range(len(prompts))] == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_failing_norm_compilation_falls_back_to_eager_norms_on_gpu(caplog):
    model = _sharpen(_gemma4_shared_kv()).to("cuda")
    prompts = _prompts(model, seed=5)
    expected = _reference(model, prompts, CAPS, [])

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    decoder = _SlotDecoder(model, prompts, list(CAPS), [], 0, 3, cuda_graphs=True)
    decoder.fused_norms = [(module, broken) for module, _ in decoder.fused_norms]
    got = {r.index: (r.tokens, r.hit_limit) for r in decoder.run()}
    assert decoder.graphs and decoder.fused_norms == []
    assert "compiled RMSNorms failed" in caplog.text
    assert [got[i] for i in range(len(prompts))] == expected


@pytest.mark.parametrize("batch_size", [2, 7])
@pytest.mark.parametrize("name", ["llama", "gemma4_shared_kv_wide_window"])
def test_prompts_behind_a_shared_prefix_match_generate(name, batch_size, tmp_path):
    """A common preamble (like a default system prompt) is prefilled once; answers stay the same."""
    from refusal_ablation.prefix import prefix_to_share

    if name == "llama":
        model = _sharpen(AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path), dtype=torch.float32))
    else:
        model = _sharpen(_gemma4_shared_kv(sliding_window=64))
    vocab = model.get_output_embeddings().weight.shape[0]
    rng = random.Random(7)
    preamble = [rng.randrange(3, vocab) for _ in range(11)]
    prompts = [preamble + tokens for tokens in _prompts(model, seed=8)]
    assert prefix_to_share(model, prompts) == 11
    expected = _reference(model, prompts, CAPS, [])
    decoder = _SlotDecoder(model, prompts, list(CAPS), [], 0, batch_size, None)
    got = {r.index: (r.tokens, r.hit_limit) for r in decoder.run()}
    assert decoder.shared is not None
    for i in range(len(prompts)):
        assert got[i] == expected[i], f"{name}, prompt {i}"


def test_sharing_stands_aside_when_prompts_outgrow_the_sliding_window():
    from refusal_ablation.prefix import prefix_to_share

    model = _gemma4_shared_kv()  # window 8
    prompts = [[5] * 12 + [6], [5] * 12 + [7, 8]]
    assert prefix_to_share(model, prompts) == 0
    assert prefix_to_share(_gemma4_shared_kv(sliding_window=64), prompts) == 12


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="torch.compile on the CPU needs a C++ compiler"
)
def test_compiled_norms_compute_what_the_modules_compute():
    """The CUDA-graph decode swaps each RMSNorm's forward for its class's forward, compiled."""
    from refusal_ablation.engine import _fused_norm_forwards

    model = _gemma4_shared_kv()
    pairs = _fused_norm_forwards(model)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert [m for m, _ in pairs] == norms and len(norms) > 10
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for module, compiled in pairs[:: max(1, len(pairs) // 6)]:
            width = module.weight.shape[0] if getattr(module, "weight", None) is not None else 16
            for rows in (3, 5):
                x = torch.randn(rows, 1, width, generator=gen)
                torch.testing.assert_close(compiled(x), module(x), rtol=1e-5, atol=1e-6)

    # decoding with them in place (put in and taken out around each step) changes no token
    model = _sharpen(model)
    prompts = _prompts(model, seed=3)
    expected = _reference(model, prompts, CAPS, [])
    decoder = _SlotDecoder(model, prompts, list(CAPS), [], 0, 3, None)
    decoder.fused_norms = _fused_norm_forwards(model)
    got = {r.index: (r.tokens, r.hit_limit) for r in decoder.run()}
    assert [got[i] for i in range(len(prompts))] == expected
    assert not any("forward" in vars(m) for m in norms)
