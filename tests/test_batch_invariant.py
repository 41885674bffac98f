"""Batch-invariant generation: each answer is a function of its own prompt alone.

Random (unsharpened) tiny models, whose near-flat logits turn any rounding difference into
another token within a few steps, so equal tokens are a sharp test of equal arithmetic. One
prompt runs past 256 positions, so the other prompts' length buckets span one or two
attention chunks. CPU tests in float32 and bfloat16; the GPU tests (marked ``gpu``) run the
same checks with CUDA graphs, and on the SmolLM2 checkpoint when one is named by
``SMOLLM2_CHECKPOINT``; and the Triton kernels (attention, RMSNorm) against the plain attention,
the CPU fallback and the norm modules, for several buffer lengths and row counts.
"""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma4Config, Gemma4ForConditionalGeneration

from refusal_ablation import kernels
from refusal_ablation.engine import INVARIANT_CHUNK, _decode_attention, _invariant_decode_attention, iter_greedy
from refusal_ablation.generation import batch_invariant_mode
from refusal_ablation.io import InputError
from tiny_models import build_tiny_llama

TRITON = kernels.available("cuda" if torch.cuda.is_available() else "cpu")

LENGTHS = (5, 270, 9, 3, 23, 12, 40)
CAPS = (40, 30, 24, 36, 12, 28, 20)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gemma4(dtype):
    text = dict(
        vocab_size=96,
        vocab_size_per_layer_input=96,
        hidden_size_per_layer_input=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        sliding_window=8,
        num_kv_shared_layers=2,
        final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"] * 2,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=None, audio_config=None))
    return model.to(dtype).eval()


@pytest.fixture(
    scope="module",
    params=[("llama", torch.float32), ("llama", torch.bfloat16), ("gemma4", torch.float32), ("gemma4", torch.bfloat16)],
    ids=lambda p: f"{p[0]}-{str(p[1]).removeprefix('torch.')}",
)
def model(request, tmp_path_factory):
    name, dtype = request.param
    if name == "gemma4":
        return _gemma4(dtype)
    path = build_tiny_llama(tmp_path_factory.mktemp("llama"), max_position_embeddings=1024)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _prompts(model, seed=0):
    vocab = model.get_output_embeddings().weight.shape[0]
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in LENGTHS]


def _answers(model, prompts, caps, order=None, **kwargs):
    """{prompt: tokens} for the prompts taken in ``order`` (a subset or permutation)."""
    order = list(range(len(prompts))) if order is None else order
    got = iter_greedy(
        model,
        [prompts[i] for i in order],
        [caps[i] for i in order],
        [],
        0,
        engine="continuous",
        batch_invariant=True,
        **kwargs,
    )
    return {tuple(prompts[order[r.index]]): r.tokens for r in got}


def test_each_answer_is_the_same_alone_in_any_batch_and_any_slot(model):
    prompts = _prompts(model)
    alone = {}
    for i in range(len(prompts)):
        alone |= _answers(model, prompts, CAPS, order=[i], batch_size=1)
    assert all(len(tokens) == CAPS[i] for i, tokens in enumerate(alone.values()))
    # all together; in batches of 2 and 5 (slots refilled as answers finish); in reverse order
    # (other slots, other prefill neighbours); a subset without the long prompt (shorter buckets)
    assert _answers(model, prompts, CAPS, batch_size="auto") == alone
    assert _answers(model, prompts, CAPS, batch_size=2) == alone
    assert _answers(model, prompts, CAPS, order=[6, 5, 4, 3, 2, 1, 0], batch_size=5) == alone
    short = [0, 2, 3, 4, 5]
    assert _answers(model, prompts, CAPS, order=short, batch_size=3) == {
        tuple(prompts[i]): alone[tuple(prompts[i])] for i in short
    }


def test_a_resumed_run_gives_the_answers_of_an_uninterrupted_one(model):
    # a resume generates only the missing prompts, in a batch of their own
    prompts = _prompts(model, seed=1)
    whole = _answers(model, prompts, CAPS, batch_size=4)
    first_part = _answers(model, prompts, CAPS, order=[0, 1, 2], batch_size=4)
    rest = _answers(model, prompts, CAPS, order=[3, 4, 5, 6], batch_size=4)
    assert first_part | rest == whole


def test_invariant_answers_are_the_greedy_answers_in_float32(tmp_path):
    path = build_tiny_llama(tmp_path, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():  # sharpened: a float32 argmax far from rounding-level ties
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(6.0)
    prompts = _prompts(model, seed=2)
    got = _answers(model, prompts, CAPS, batch_size=3)
    for prompt, cap in zip(prompts, CAPS):
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=cap,
            min_new_tokens=cap,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert got[tuple(prompt)] == out[0, len(prompt) :].tolist()


def test_chunked_attention_ignores_the_masked_tail_bit_for_bit():
    torch.manual_seed(3)
    batch, heads, n_kv, dim = 3, 4, 2, 16
    query = torch.randn(batch, heads, 1, dim, dtype=torch.bfloat16)
    keys = torch.randn(batch, n_kv, 3 * INVARIANT_CHUNK, dim, dtype=torch.bfloat16)
    values = torch.randn(batch, n_kv, 3 * INVARIANT_CHUNK, dim, dtype=torch.bfloat16)
    valid = torch.tensor([5, 300, 256])  # keys each row may see
    columns = torch.arange(3 * INVARIANT_CHUNK)

    def attend(length):
        mask = (columns[None, :length] < valid[:, None])[:, None, None, :]
        return _invariant_decode_attention(None, query, keys[:, :, :length], values[:, :, :length], mask)[0]

    short, long = attend(2 * INVARIANT_CHUNK), attend(3 * INVARIANT_CHUNK)
    assert torch.equal(short, long)
    # and it is attention: close to a float64 softmax over the valid keys
    for row in range(batch):
        n = int(valid[row])
        q = query[row, :, 0].double().reshape(n_kv, heads // n_kv, dim)
        k, v = keys[row, :, :n].double(), values[row, :, :n].double()
        ref = torch.softmax(q @ k.transpose(1, 2) * dim**-0.5, dim=-1) @ v
        err = (long[row, 0].double().reshape(n_kv, heads // n_kv, dim) - ref).norm() / ref.norm()
        assert err < 1e-2


def _attention_inputs(device, dtype, length=4096, seed=4):
    torch.manual_seed(seed)
    batch, heads, n_kv, dim = 4, 6, 2, 64
    query = torch.randn(batch, heads, 1, dim, dtype=dtype).to(device)
    keys = torch.randn(batch, n_kv, length, dim, dtype=dtype).to(device)
    values = torch.randn(batch, n_kv, length, dim, dtype=dtype).to(device)
    valid = torch.tensor([200, 37, 250, 5]).to(device)  # keys each row may see
    return query, keys, values, valid


def _attend(fn, query, keys, values, valid, length):
    columns = torch.arange(length, device=keys.device)
    mask = (columns[None, :] < valid[:, None])[:, None, None, :]
    return fn(None, query, keys[:, :, :length], values[:, :, :length], mask)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_invariant_attention_of_a_row_is_the_same_for_256_1024_and_4096_keys(dtype):
    query, keys, values, valid = _attention_inputs("cpu", dtype)
    outs = [_attend(_invariant_decode_attention, query, keys, values, valid, n) for n in (256, 1024, 4096)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    plain = _attend(_decode_attention, query, keys, values, valid, 256)
    assert torch.allclose(outs[0].float(), plain.float(), atol=2e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize(
    "value, device, expected",
    [
        ("auto", "cuda", True),
        ("auto", "cuda:1", True),
        ("auto", "cpu", False),
        (True, "cpu", True),
        (False, "cuda", False),
    ],
)
def test_batch_invariant_setting_resolves_per_device(value, device, expected):
    assert batch_invariant_mode(value, device) is expected


def test_a_bad_batch_invariant_setting_is_named():
    with pytest.raises(InputError, match="generation.batch_invariant"):
        batch_invariant_mode("yes", "cuda")


# ------------------------------------------------------------------------------ GPU


def _gpu_invariance(model, prompts, caps):
    alone = {}
    for i in range(len(prompts)):
        alone |= _answers(model, prompts, caps, order=[i], batch_size=1)
    for size in (7, 64, "auto"):
        assert _answers(model, prompts, caps, batch_size=size) == alone, f"batch size {size}"
    reverse = list(range(len(prompts)))[::-1]
    assert _answers(model, prompts, caps, order=reverse, batch_size=3) == alone, "reversed, batch 3"
    half = len(prompts) // 2
    resumed = _answers(model, prompts, caps, order=list(range(half)), batch_size=5)
    resumed |= _answers(model, prompts, caps, order=list(range(half, len(prompts))), batch_size=5)
    assert resumed == alone, "in two parts"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tiny_model_answers_are_batch_invariant_on_gpu(dtype):
    model = _gemma4(dtype).to("cuda")
    _gpu_invariance(model, _prompts(model), list(CAPS))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(not os.environ.get("SMOLLM2_CHECKPOINT"), reason="SMOLLM2_CHECKPOINT names no checkpoint")
def test_smollm2_answers_are_batch_invariant_on_gpu():
    from refusal_ablation.loading import encode_chat, load_model

    model, tokenizer = load_model(os.environ["SMOLLM2_CHECKPOINT"], dtype="bfloat16", device="cuda")
    questions = [
        "How do I bake bread?",
        "Write a haiku about rain.",
        "What is the capital of France?",
        "Explain photosynthesis to a child.",
        "How can I pick a lock?",
        "List three prime numbers.",
        "Why is the sky blue?",
        "Tell me a story about a dragon who learns to read.",
    ] * 2
    prompts = [list(p) for p in encode_chat(tokenizer, questions[:8])]
    prompts += [p + p for p in prompts]  # longer prompts, other buckets
    _gpu_invariance(model, prompts, [96] * len(prompts))


def test_a_resume_reuses_answers_of_the_same_mode_only(tmp_path, caplog):
    from refusal_ablation import io
    from refusal_ablation.generation import generate_shard, partial_paths, resume_meta

    model_dir = build_tiny_llama(tmp_path / "model")
    questions = tmp_path / "questions.jsonl"
    io.write_jsonl(
        questions,
        [
            {"question_id": i, "category": "1", "turns": [q], "prompt_style": "base"}
            for i, q in enumerate(["Hi", "Name a river.", "Why?", "Tell me a joke."], start=1)
        ],
    )

    def run(out, invariant):
        generation = {"max_new_tokens": 8, "batch_size": 2, "batch_invariant": invariant}
        return generate_shard(questions, model_dir, out / "a.jsonl", out / "a.csv", "baseline", 0, 1, generation, "cpu")

    caplog.set_level("INFO")
    run(tmp_path / "whole", True)
    assert "generation mode: batch-invariant" in caplog.text
    whole = (tmp_path / "whole" / "a.jsonl").read_bytes()
    for invariant, reused in ((True, 2), (False, 0)):
        out = tmp_path / f"resumed-{invariant}"
        run(out, True)
        answers = out / "a.jsonl"
        partial, meta = partial_paths(answers)
        # as an interrupted invariant run leaves it: two answers in the sidecar, no answer file
        records = [
            {"question_id": a["question_id"], "text": io.answer_text(a), "answer_tokens": 1, "hit_token_limit": False}
            for a in io.read_answers(answers)[:2]
        ]
        answers.unlink()
        meta.write_text(json.dumps(resume_meta(model_dir, io.read_questions(questions), "baseline", 8, True)) + "\n")
        partial.write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = run(out, invariant)
        assert summary.n_reused == reused
        if invariant:
            assert answers.read_bytes() == whole


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON, reason="needs Triton on CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_attention_reads_a_rows_own_keys_only_on_gpu(dtype):
    query, keys, values, valid = _attention_inputs("cuda", dtype)
    outs = [_attend(_invariant_decode_attention, query, keys, values, valid, n) for n in (256, 1024, 4096)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # a row alone, or among other rows in another slot order, gives the same bits
    alone = _attend(_invariant_decode_attention, query[1:2], keys[1:2], values[1:2], valid[1:2], 256)
    assert torch.equal(alone[0], outs[0][1])
    order = torch.tensor([3, 1, 0, 2], device="cuda")
    shuffled = _attend(_invariant_decode_attention, query[order], keys[order], values[order], valid[order], 1024)
    assert torch.equal(shuffled, outs[0][order])
    # and it computes attention: close to the plain decode attention and to the torch fallback
    plain = _attend(_decode_attention, query, keys, values, valid, 256)
    fallback = _attend(_invariant_decode_attention, *(t.cpu() for t in (query, keys, values, valid)), 256)
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert torch.allclose(outs[0].float(), plain.float(), atol=tolerance)
    assert torch.allclose(outs[0].float().cpu(), fallback.float(), atol=tolerance)


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON, reason="needs Triton on CUDA")
def test_triton_norms_compute_what_the_modules_compute_for_any_row_count_on_gpu(tmp_path):
    model = _gemma4(torch.bfloat16).to("cuda")
    pairs = kernels.invariant_norm_forwards(model, "cuda")
    kinds = {(type(m).__name__, getattr(m, "with_scale", True)) for m, _ in pairs}
    assert ("Gemma4RMSNorm", False) in kinds and ("Gemma4RMSNorm", True) in kinds
    torch.manual_seed(5)
    for module, forward in pairs:
        size = module.weight.shape[0] if getattr(module, "weight", None) is not None else 16
        rows = torch.randn(300, size, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            want = module(rows)
        got = forward(rows)
        assert torch.allclose(got.float(), want.float(), atol=3e-2, rtol=1e-2)
        for n in (1, 7, 64):
            assert torch.equal(forward(rows[:n]), got[:n])
    llama = AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path), dtype=torch.bfloat16).to("cuda")
    assert len(kernels.invariant_norm_forwards(llama, "cuda")) == 2 * llama.config.num_hidden_layers + 1


def test_norm_scale_forms_are_read_off_the_modules():
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    weight = torch.linspace(-0.5, 0.5, 16)
    gemma3, gemma4, llama = Gemma3RMSNorm(16), Gemma4RMSNorm(16), LlamaRMSNorm(16)
    for module in (gemma3, gemma4, llama):
        module.weight.data.copy_(weight)
    assert torch.equal(kernels.norm_scale_of(gemma3, 16)[0], 1.0 + weight)
    assert torch.equal(kernels.norm_scale_of(gemma4, 16)[0], weight)
    assert torch.equal(kernels.norm_scale_of(llama, 16)[0], weight)
    assert kernels.norm_scale_of(Gemma4RMSNorm(16, with_scale=False), 64) == (None, 1e-6)
    assert kernels.norm_scale_of(torch.nn.LayerNorm(16), 16) is None  # not a known form
