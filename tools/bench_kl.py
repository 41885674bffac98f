"""KL benchmark: the cost measurement of the reference run on a gemma-4-E4B-shaped model.

Builds one randomly initialised model with the gemma-4-E4B-it text architecture (bf16, built
directly on the GPU, nothing downloaded; the same builder as tools/bench_generation.py), an
edited copy of it (the project's ``reference`` edit with random unit directions), and times
``refusal_ablation.kl.prompt_kl`` with both models resident: per prompt the full-vocabulary
KL(P_baseline || P_edited) in float32 at the first answer position and along
``--answer-tokens`` teacher-forced answer tokens. The reference workload is 330 prompts
(250 XSTest safe + 80 held-out safe) x 256 answer tokens. Printed: seconds, prompts/s,
positions/s and peak GPU memory per batch size; a self-check that KL(baseline || baseline)
is 0 on a few prompts.

    python tools/bench_kl.py --out bench_kl.json     # on a CUDA machine
    python tools/bench_kl.py --tiny --device cpu     # shrunken model and workload (smoke run)
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "tools"))

from bench_generation import E4B_TEXT, TINY_TEXT, build_model  # noqa: E402

from refusal_ablation import architecture  # noqa: E402
from refusal_ablation.edit import apply_edit, plan_edit  # noqa: E402
from refusal_ablation.kl import prompt_kl  # noqa: E402

log = logging.getLogger("bench_kl")


def random_workload(n: int, answer_tokens: int, vocab: int, rng: np.random.Generator, low: int, high: int):
    prompts = [[2] + rng.integers(10, vocab, int(rng.integers(low, high + 1))).tolist() for _ in range(n)]
    answers = [rng.integers(10, vocab, answer_tokens).tolist() for _ in range(n)]
    return prompts, answers


def edited_copy(model, rng: np.random.Generator):
    """A copy with the reference edit along random unit directions, one per layer."""
    edited = copy.deepcopy(model)
    text = architecture.text_config(model)
    directions = rng.standard_normal((text.num_hidden_layers, text.hidden_size)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    apply_edit(plan_edit(edited, directions, "reference"))
    return edited.eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=330)
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", default="16", help="comma-separated batch sizes to time")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="shrunken model and workload (CPU smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="write all numbers as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: use --device cpu (with --tiny)")
    if args.tiny:
        args.prompts, args.answer_tokens = min(args.prompts, 12), min(args.answer_tokens, 16)
    text = TINY_TEXT if args.tiny else E4B_TEXT
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    rng = np.random.default_rng(2445)

    start = time.monotonic()
    baseline = build_model(text, args.device, dtype)
    edited = edited_copy(baseline, rng)
    sync(args.device)
    build_s = time.monotonic() - start
    prompts, answers = random_workload(args.prompts, args.answer_tokens, text["vocab_size"], rng, 20, 80)
    positions = sum(len(a) + 1 for a in answers)
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "model": "tiny gemma-4 shape" if args.tiny else "gemma-4-E4B-it text shape, random weights",
        "dtype": str(dtype),
        "vocab_size": text["vocab_size"],
        "prompts": args.prompts,
        "answer_tokens": args.answer_tokens,
        "positions": positions,
        "build_s": build_s,
        "runs": [],
    }

    check = prompt_kl(baseline, baseline, prompts[:4], answers[:4], 0, 4)
    result["self_check_max_kl"] = max(max(row) for row in check)
    log.info("self-check: KL(baseline || baseline) at most %.3g on 4 prompts", result["self_check_max_kl"])

    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        if args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        prompt_kl(baseline, edited, prompts[:batch_size], answers[:batch_size], 0, batch_size)  # warm-up
        sync(args.device)
        start = time.monotonic()
        values = prompt_kl(baseline, edited, prompts, answers, 0, batch_size)
        sync(args.device)
        seconds = time.monotonic() - start
        run = {
            "batch_size": batch_size,
            "seconds": seconds,
            "prompts_per_s": args.prompts / seconds,
            "positions_per_s": positions / seconds,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
            "mean_kl_first": float(np.mean([v[0] for v in values])),
            "mean_kl_answer": float(np.mean([v[1] for v in values])),
        }
        result["runs"].append(run)
        print(
            f"batch {batch_size}: {args.prompts} prompts x {args.answer_tokens} teacher-forced tokens in "
            f"{seconds:.1f} s ({run['prompts_per_s']:.1f} prompts/s, {run['positions_per_s']:.0f} positions/s"
            + (f", peak {run['peak_gpu_gib']:.1f} GiB" if run["peak_gpu_gib"] is not None else "")
            + f"); mean KL first {run['mean_kl_first']:.3g}, along the answer {run['mean_kl_answer']:.3g} nats"
        )
    print(
        f"models built in {build_s:.1f} s; self-check max KL(baseline || baseline) = {result['self_check_max_kl']:.2g}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
