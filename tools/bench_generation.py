"""Answer-generation benchmark: the reference setting against the project's engine.

Runs, in one process, on one randomly initialised model with the gemma-4-E4B-it text
architecture (bf16, built directly on the GPU, nothing downloaded) and the same prompts:

- the reference setting: plain ``model.generate``, batch 8, sequences padded to the longest
  in their batch. It runs at about 60 tokens/s, so it is timed on a subset (a few batches of
  8 for a fixed number of steps) and its time for the whole mix is extrapolated from the
  measured time per step: a batch costs (longest answer in it) x (time per step);
- the project's engine (``refusal_ablation.engine``, continuous batching with CUDA graphs)
  on the whole mix, in its fast mode and (unless ``--no-invariant``) in its batch-invariant
  mode (``generation.batch_invariant``: each answer a function of its prompt alone).

Answer lengths are forced to a realistic mix through per-sequence token caps with no stop
token: about half short refusals (20-120 tokens), most of the rest 300-1,200 tokens, a few
at the cap. Printed: tokens/s for each, their ratio, the fraction of the hardware bound
reached (bytes of weights + keys/values read per step over the measured copy bandwidth,
and the roofline with the measured bf16 matrix rate), and the estimated time of the
reference experiment's generation (2 conditions x 440 prompts, cap 4096).

    python tools/bench_generation.py --out bench.json          # on a CUDA machine
    python tools/bench_generation.py --tiny                     # shrunken model, CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from refusal_ablation import architecture  # noqa: E402
from refusal_ablation.architecture import find_decoder_stack  # noqa: E402
from refusal_ablation.engine import _exact_cublas_reductions, _SlotDecoder, iter_greedy  # noqa: E402

log = logging.getLogger("bench_generation")

# gemma-4-E4B-it text decoder, as measured in issue 6
E4B_TEXT = dict(
    vocab_size=262_144,
    vocab_size_per_layer_input=262_144,
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=42,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    global_head_dim=512,
    num_kv_shared_layers=18,
    final_logit_softcapping=30.0,
    hidden_size_per_layer_input=256,
    sliding_window=512,
    max_position_embeddings=131_072,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)
TINY_TEXT = dict(
    E4B_TEXT,
    vocab_size=512,
    vocab_size_per_layer_input=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=12,
    head_dim=16,
    global_head_dim=32,
    num_kv_shared_layers=4,
    hidden_size_per_layer_input=8,
    sliding_window=32,
)


def build_model(text: dict, device: str, dtype: torch.dtype):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    config = Gemma4Config(text_config=dict(text), vision_config=None, audio_config=None)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Gemma4ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def realistic_mix(n: int, cap: int, rng: np.random.Generator) -> list[int]:
    """Forced answer lengths: half 20-120, 45% 300-1,200, the rest at the cap; shuffled."""
    n_short, n_long = round(0.5 * n), round(0.45 * n)
    lengths = list(rng.integers(20, 121, n_short)) + list(rng.integers(300, 1201, n_long))
    lengths += [cap] * (n - len(lengths))
    rng.shuffle(lengths)
    return [int(min(x, cap)) for x in lengths]


def random_prompts(n: int, vocab: int, rng: np.random.Generator, low: int, high: int) -> list[list[int]]:
    return [rng.integers(10, vocab, int(rng.integers(low, high + 1))).tolist() for _ in range(n)]


def measure_ceilings(device: str) -> dict:
    """Device-to-device copy bandwidth (read + write) and bf16 matrix rate, medians of 10."""
    if device != "cuda":
        return {"bandwidth_bytes_per_s": float("nan"), "bf16_flops_per_s": float("nan")}

    def timed(fn, reps=10):
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    src = torch.randn(2**30, device=device, dtype=torch.float32)  # 4 GiB
    dst = torch.empty_like(src)
    copy_s = timed(lambda d=dst, s=src: d.copy_(s))
    del src, dst
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_s = timed(lambda x=a, y=b: x @ y)
    del a, b
    torch.cuda.empty_cache()
    return {"bandwidth_bytes_per_s": 2 * 4 * 2**30 / copy_s, "bf16_flops_per_s": 2 * 8192**3 / mm_s}


class StepCost:
    """Bytes and FLOPs one decode step must move/do, for given context lengths of the active rows."""

    def __init__(self, model):
        text = architecture.text_config(model)
        stack = find_decoder_stack(model)
        layers = stack.layers
        element = next(model.parameters()).element_size()
        language = model.get_submodule(stack.layers_name.rpartition(".")[0])  # the module holding the layers
        lookups = {id(language.embed_tokens_per_layer.weight), id(language.embed_tokens.weight)}
        # every matrix is read once per step; embedding lookups read only the rows they use
        params = {id(p): p for p in model.parameters() if id(p) not in lookups}
        params[id(model.lm_head.weight)] = model.lm_head.weight  # tied to the embedding, read whole
        self.weight_bytes = sum(p.numel() * element for p in params.values())
        self.matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        self.layers = []  # (kv bytes per token, attention flops per token per row, window or None)
        for idx, layer in enumerate(layers):
            attn = layer.self_attn
            n_kv = (
                text.per_layer_config[idx].num_key_value_heads
                if hasattr(text, "per_layer_config")
                else text.num_key_value_heads
            )
            head_dim = attn.head_dim
            window = text.sliding_window if text.layer_types[idx] == "sliding_attention" else None
            self.layers.append((2 * n_kv * head_dim * element, 4 * text.num_attention_heads * head_dim, window))

    def step(self, contexts: np.ndarray) -> tuple[float, float]:
        kv_bytes = flops = 0.0
        for per_token, attn_flops, window in self.layers:
            seen = contexts if window is None else np.minimum(contexts, window)
            total = float(seen.sum())
            kv_bytes += per_token * total
            flops += attn_flops * total
        flops += 2.0 * self.matmul_params * len(contexts)
        return self.weight_bytes + kv_bytes, flops


def run_reference(model, prompts, lengths, batch: int, steps: int, n_batches: int, device: str) -> dict:
    """Time model.generate (batch 8, padded) for `steps` forced tokens on a subset; extrapolate."""

    def generate(indices, n_new):
        width = max(len(prompts[i]) for i in indices)
        ids = torch.zeros((len(indices), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        sync()
        start = time.monotonic()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                eos_token_id=None,
                pad_token_id=0,
            )
        sync()
        assert out.shape[1] == width + n_new
        return time.monotonic() - start

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    generate(list(range(batch)), 4)  # warm-up
    per_step = []
    for b in range(n_batches):
        indices = list(range(b * batch, (b + 1) * batch))
        short, full = generate(indices, 2), generate(indices, steps)
        per_step.append((full - short) / (steps - 2))
        log.info("reference batch %d: %d steps in %.1f s", b, steps, full)
    step_s = statistics.mean(per_step)
    # the reference code walks the questions in file order, 8 at a time, each batch as long as its longest
    total_s = sum(max(lengths[i : i + batch]) * step_s for i in range(0, len(lengths), batch))
    return {
        "batch_size": batch,
        "measured_batches": n_batches,
        "measured_steps": steps,
        "seconds_per_step": step_s,
        "extrapolated_seconds": total_s,
        "tokens_per_s": sum(lengths) / total_s,
    }


def run_engine(
    model, prompts, lengths, batch_size, cost: StepCost, ceilings: dict, fuse_norms=None, batch_invariant=False
) -> dict:
    decoder = _SlotDecoder(
        model,
        prompts,
        lengths,
        [],
        0,
        batch_size,
        cuda_graphs=None,
        fuse_norms=fuse_norms,
        batch_invariant=batch_invariant,
    )
    decoder.trace = []
    start = time.monotonic()
    with _exact_cublas_reductions(batch_invariant and decoder.device.type == "cuda"):
        results = {r.index: r for r in decoder.run()}
    wall = time.monotonic() - start
    sample = range(min(4, len(prompts)))
    gaps = logit_gaps(model, [prompts[i] for i in sample], [results[i].tokens[:48] for i in sample])
    bad = [i for i, n in enumerate(lengths) if len(results[i].tokens) != n or not results[i].hit_limit]
    if bad:
        raise RuntimeError(f"engine answers with the wrong forced length: prompts {bad[:10]}")
    bytes_s = flops_s = 0.0
    for contexts in decoder.trace:
        step_bytes, step_flops = cost.step(contexts)
        bytes_s += step_bytes / ceilings["bandwidth_bytes_per_s"]
        flops_s += max(step_bytes / ceilings["bandwidth_bytes_per_s"], step_flops / ceilings["bf16_flops_per_s"])
    decode_only = decoder.decode_seconds - decoder.capture_seconds
    tokens = sum(lengths)
    return {
        "batch_size": decoder.slots,
        "tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_s": tokens / wall,
        "prefill_seconds": decoder.prefill_seconds,
        "decode_seconds": decoder.decode_seconds,
        "graph_capture_seconds": decoder.capture_seconds,
        "graphs": len(decoder.graphs),
        "steps": decoder.steps,
        "bandwidth_bound_seconds": bytes_s,
        "roofline_bound_seconds": flops_s,
        "bandwidth_fraction_decode": bytes_s / decode_only if decode_only > 0 else float("nan"),
        "roofline_fraction_decode": flops_s / decode_only if decode_only > 0 else float("nan"),
        "bandwidth_fraction_wall": bytes_s / wall,
        "roofline_fraction_wall": flops_s / wall,
        "mean_active_rows": float(np.mean([len(c) for c in decoder.trace])) if decoder.trace else 0.0,
        "logit_gaps_first_48_tokens_of_4_answers": gaps,
    }


def logit_gaps(model, prompts, answers) -> dict:
    """How far each engine token is from the argmax of model's own teacher-forced logits.

    The gap is max logit minus the logit of the engine's token, from one forward pass over
    prompt + answer: 0 where the engine chose the argmax; a wrong cache or position gives gaps
    of whole logit units, bf16 rounding only near-ties.
    """
    gaps, spreads = [], []
    for prompt, answer in zip(prompts, answers):
        with torch.inference_mode():
            forced = torch.tensor([prompt + answer], device=model.device)
            logits = model(input_ids=forced).logits[0, len(prompt) - 1 : -1].float()
        chosen = logits.gather(1, torch.tensor(answer, device=logits.device)[:, None])[:, 0]
        gaps += (logits.max(dim=1).values - chosen).tolist()
        spreads.append(float(logits.std()))
    return {
        "argmax_rate": float(np.mean([g == 0 for g in gaps])),
        "max_logit_gap": float(max(gaps)),
        "median_logit_gap": float(np.median(gaps)),
        "logit_std": float(np.mean(spreads)),
        "checked_tokens": len(gaps),
    }


def agreement(model, prompts, n_new: int) -> dict:
    """Engine vs model.generate on each prompt alone, plus the engine tokens' logit gaps."""
    got = {
        r.index: r.tokens
        for r in iter_greedy(
            model, prompts, [n_new] * len(prompts), [], 0, batch_size=len(prompts), engine="continuous"
        )
    }
    same, prefixes = 0, []
    for i, prompt in enumerate(prompts):
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt], device=model.device),
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        ref = out[0, len(prompt) :].tolist()
        same += ref == got[i]
        prefixes.append(next((k for k, (a, b) in enumerate(zip(ref, got[i])) if a != b), n_new))
    return {
        "prompts": len(prompts),
        "tokens": n_new,
        "dtype": str(next(model.parameters()).dtype),
        "identical": same,
        "mean_common_prefix": float(np.mean(prefixes)),
        **logit_gaps(model, prompts, [got[i] for i in range(len(prompts))]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=440)
    parser.add_argument("--cap", type=int, default=4096)
    parser.add_argument("--batch-size", default="auto", help="engine batch size: 'auto' or an int")
    parser.add_argument("--extra-batch-sizes", default="", help="comma-separated engine batch sizes to also run")
    parser.add_argument(
        "--unfused-too", action="store_true", help="also run the engine without compiled RMSNorms, side by side"
    )
    parser.add_argument(
        "--no-invariant",
        action="store_true",
        help="skip the engine's batch-invariant mode (run by default beside the fast mode)",
    )
    parser.add_argument("--reference-batches", type=int, default=2)
    parser.add_argument("--reference-steps", type=int, default=64)
    parser.add_argument("--agreement-prompts", type=int, default=8)
    parser.add_argument(
        "--float32-agreement",
        action="store_true",
        help="also check token-for-token agreement on a float32 copy of the model",
    )
    parser.add_argument(
        "--self-check-only",
        action="store_true",
        help="only measure how often model.generate's own tokens are the teacher-forced argmax "
        "(bf16 and float32), i.e. how chaotic the random model is, and exit",
    )
    parser.add_argument("--tiny", action="store_true", help="shrunken model and workload (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    text = TINY_TEXT if args.tiny else E4B_TEXT
    cap = min(args.cap, 256) if args.tiny else args.cap
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rng = np.random.default_rng(2445)

    report = {}
    if args.self_check_only:
        for check_dtype in (torch.bfloat16, torch.float32) if device == "cuda" else (torch.float32,):
            check = build_model(text, device, check_dtype)
            check_prompts = random_prompts(
                args.agreement_prompts, text["vocab_size"], np.random.default_rng(7), 20, 200
            )
            answers = []
            for prompt in check_prompts:
                with torch.inference_mode():
                    out = check.generate(
                        torch.tensor([prompt], device=device),
                        max_new_tokens=24,
                        min_new_tokens=24,
                        do_sample=False,
                        eos_token_id=None,
                        pad_token_id=0,
                    )
                answers.append(out[0, len(prompt) :].tolist())
            report[f"generate_self_check_{check_dtype}"] = logit_gaps(check, check_prompts, answers)
            print(f"model.generate's own tokens, {check_dtype}: {report[f'generate_self_check_{check_dtype}']}")
            del check
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.float32_agreement:
        exact = build_model(text, device, torch.float32)
        vocab = text["vocab_size"]
        exact_prompts = random_prompts(args.agreement_prompts, vocab, np.random.default_rng(7), 20, 200)
        report["agreement_float32"] = agreement(exact, exact_prompts, 48)
        log.info("float32 agreement with model.generate: %s", report["agreement_float32"])
        del exact
        if device == "cuda":
            torch.cuda.empty_cache()

    def save():
        if args.out:
            args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")

    save()
    start = time.monotonic()
    model = build_model(text, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built %.2fB-parameter model in %.1f s", n_params / 1e9, time.monotonic() - start)
    ceilings = measure_ceilings(device)
    lengths = realistic_mix(args.prompts, cap, rng)
    if args.tiny:
        lengths = [max(2, n // 16) if n < cap else n for n in lengths]
    prompts = random_prompts(args.prompts, text["vocab_size"], rng, 20, 200)
    cost = StepCost(model)

    report |= {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "parameters": n_params,
        "dtype": str(dtype),
        "ceilings": ceilings,
        "weight_bytes_per_step": cost.weight_bytes,
        "prompts": args.prompts,
        "cap": cap,
        "answer_tokens": sum(lengths),
        "mean_answer_tokens": float(np.mean(lengths)),
        "length_mix": {
            "short_20_120": sum(n <= 120 for n in lengths),
            "long_300_1200": sum(300 <= n <= 1200 for n in lengths),
            "at_cap": sum(n == cap for n in lengths),
        },
    }
    if device == "cuda":
        # fail fast if CUDA graphs cannot be captured: the eager engine would take many minutes here
        probe = _SlotDecoder(model, prompts[:16], [8] * 16, [], 0, 16, cuda_graphs=True)
        list(probe.run())
        if not (probe.use_graphs and probe.graphs):
            raise RuntimeError("CUDA graph capture failed; see the warning above")
        log.info("graph probe: %d graphs captured in %.1f s", len(probe.graphs), probe.capture_seconds)
        del probe
    if args.agreement_prompts:
        report["agreement"] = agreement(model, prompts[: args.agreement_prompts], 48)
        log.info("agreement with model.generate: %s", report["agreement"])
        save()
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    report["engine"] = run_engine(model, prompts, lengths, batch_size, cost, ceilings)
    log.info("engine: %s", report["engine"])
    save()
    if device == "cuda":
        torch.cuda.empty_cache()
    if args.reference_batches:
        report["reference"] = run_reference(
            model, prompts, lengths, 8, args.reference_steps, args.reference_batches, device
        )
        log.info("reference: %s", report["reference"])
        save()
    for extra in filter(None, args.extra_batch_sizes.split(",")):
        report[f"engine_batch_{extra}"] = run_engine(model, prompts, lengths, int(extra), cost, ceilings)
        log.info("engine batch %s: %s", extra, report[f"engine_batch_{extra}"])
    if not args.no_invariant:
        if device == "cuda":
            torch.cuda.empty_cache()
        report["engine_invariant"] = run_engine(
            model, prompts, lengths, batch_size, cost, ceilings, batch_invariant=True
        )
        log.info("engine, batch-invariant mode: %s", report["engine_invariant"])
        save()
    if args.unfused_too:
        report["engine_unfused"] = run_engine(model, prompts, lengths, batch_size, cost, ceilings, fuse_norms=False)
        log.info("engine without compiled norms: %s", report["engine_unfused"])

    engine = report["engine"]
    # the reference experiment: both conditions, 440 prompts each, same mix, model load excluded
    report["estimate_reference_experiment_seconds"] = 2 * engine["wall_seconds"] * 440 / args.prompts
    lines = [
        f"model: random-init gemma-4-E4B text architecture, {n_params / 1e9:.2f}B parameters, {dtype}, {device}",
        f"mix: {args.prompts} prompts, {sum(lengths)} answer tokens (mean {np.mean(lengths):.0f}), "
        f"{report['length_mix']}",
        f"ceilings: copy {ceilings['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {ceilings['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s",
        f"engine: batch {engine['batch_size']}, {engine['tokens_per_s']:.0f} tok/s "
        f"({engine['wall_seconds']:.1f} s wall: prefill {engine['prefill_seconds']:.1f} s, decode "
        f"{engine['decode_seconds']:.1f} s incl. {engine['graphs']} graph captures "
        f"{engine['graph_capture_seconds']:.1f} s; {engine['steps']} steps)",
        f"  bandwidth bound reached: {engine['bandwidth_fraction_decode']:.1%} of decode time, "
        f"{engine['bandwidth_fraction_wall']:.1%} of wall; roofline: {engine['roofline_fraction_decode']:.1%} / "
        f"{engine['roofline_fraction_wall']:.1%}",
    ]
    if "reference" in report:
        ref = report["reference"]
        report["ratio"] = engine["tokens_per_s"] / ref["tokens_per_s"]
        lines.append(
            f"reference (generate, batch 8, padded; {ref['measured_batches']} batches x "
            f"{ref['measured_steps']} steps measured, rest extrapolated): "
            f"{ref['seconds_per_step'] * 1e3:.0f} ms/step, {ref['tokens_per_s']:.1f} tok/s, "
            f"{ref['extrapolated_seconds'] / 60:.0f} min for this mix"
        )
        lines.append(f"ratio engine / reference: {report['ratio']:.0f}x")
    for key in ("agreement_float32", "agreement"):
        if key in report:
            agree = report[key]
            lines.append(
                f"{key} ({agree['dtype']}, {agree['prompts']} prompts x {agree['tokens']} tokens): "
                f"{agree['identical']}/{agree['prompts']} identical to model.generate, mean common prefix "
                f"{agree['mean_common_prefix']:.1f}; engine token is the argmax {agree['argmax_rate']:.1%}, "
                f"max gap {agree['max_logit_gap']:.3f} (logit std {agree['logit_std']:.2f})"
            )
    if "engine_unfused" in report:
        plain = report["engine_unfused"]
        lines.append(
            f"engine without compiled RMSNorms: {plain['tokens_per_s']:.0f} tok/s, "
            f"{plain['bandwidth_fraction_decode']:.1%} of the bound over decode time "
            f"({plain['bandwidth_fraction_wall']:.1%} of wall); with them: x"
            f"{engine['tokens_per_s'] / plain['tokens_per_s']:.2f}"
        )
    if "engine_invariant" in report:
        inv = report["engine_invariant"]
        report["invariant_over_fast"] = inv["tokens_per_s"] / engine["tokens_per_s"]
        lines.append(
            f"engine, batch-invariant mode: batch {inv['batch_size']}, {inv['tokens_per_s']:.0f} tok/s "
            f"({inv['wall_seconds']:.1f} s wall: prefill {inv['prefill_seconds']:.1f} s, decode "
            f"{inv['decode_seconds']:.1f} s incl. {inv['graphs']} graph captures "
            f"{inv['graph_capture_seconds']:.1f} s); {report['invariant_over_fast']:.1%} of the fast mode"
        )
        if "reference" in report:
            report["invariant_ratio"] = inv["tokens_per_s"] / report["reference"]["tokens_per_s"]
            lines.append(f"ratio batch-invariant engine / reference: {report['invariant_ratio']:.0f}x")
    lines.append(f"engine tokens' logit gaps: {engine['logit_gaps_first_48_tokens_of_4_answers']}")
    lines.append(
        f"estimated generation time of the reference experiment (2 x 440 prompts, cap 4096, this mix): "
        f"{report['estimate_reference_experiment_seconds'] / 60:.1f} min"
    )
    print("\n".join(lines))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
