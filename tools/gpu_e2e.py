"""GPU end-to-end check: the real DAG on a random-init model with the gemma-4-E4B-it architecture.

On a CUDA machine this

1. builds a randomly initialised ``Gemma4ForConditionalGeneration`` with the E4B text
   architecture (the one ``tools/bench_generation.py`` uses; no vision or audio towers), in
   bf16 on the GPU, and saves it with the project's tiny Gemma-style test tokenizer
   (``tests/tiny_models.py``); the vocabulary is cut to that tokenizer's 262 ids unless
   ``--full-vocab`` keeps E4B's 262,144 (only embedding rows differ);
2. copies the workflow (Snakefile, workflow/, config/, resources/demo/) into a work
   directory and writes a config derived from ``config/demo.yaml`` with
   ``model.source: local``, no refusal tuning, a small token cap and ``compute.device: cuda``;
3. runs ``snakemake --configfile <that config> --cores all --resources gpu=1``: split,
   activations, directions, edit, answers of baseline and edited to the benchmark prompts,
   strmatch judge, stats and figures (the held-out check is off: two more model loads);
4. writes a summary (per-rule seconds from ``benchmarks/``, answer lengths, the stats
   summary, the produced figures) to ``--out`` and exits non-zero if any step failed.

    python tools/gpu_e2e.py --workdir /tmp/e2e --out e2e-report
    python tools/gpu_e2e.py --tiny --device cpu --workdir /tmp/e2e-tiny     # CPU smoke run

The model is random: the check proves the code path on the real architecture and size,
not any refusal behaviour (strmatch on random text finds no refusals).

With ``--config FILE`` it instead runs that config's whole DAG as written (model, tune,
held-out check, edits), with only ``compute`` switched to the GPU (``device: cuda``, one GPU
per job). ``resources/downloads/`` of this checkout, where the model's wheels can already
lie, is linked into the work directory, so a machine without network prepares the model
from them (see docs/performance.md for Gemma 3 270M):

    python tools/gpu_e2e.py --config config/gemma3.yaml --workdir /tmp/e2e-gemma3 --out e2e-gemma3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))

from bench_generation import E4B_TEXT, TINY_TEXT  # noqa: E402

from tiny_models import _token_ids, build_tiny_tokenizer  # noqa: E402

WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "resources/demo", "resources/chat_templates", "vendor")


def build_checkpoint(path: Path, tiny: bool, device: str, full_vocab: bool = False) -> dict:
    """Random-init E4B-architecture checkpoint plus the tiny Gemma-style tokenizer, in ``path``."""
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, GenerationConfig

    build_tiny_tokenizer(path, style="gemma")
    ids = _token_ids(path)
    text = dict(
        TINY_TEXT if tiny else E4B_TEXT, pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"]
    )
    if not full_vocab:
        # the test tokenizer has 262 ids: a 262,144-row vocabulary would only add 3.5B unused parameters
        text |= {"vocab_size": ids["__vocab_size__"], "vocab_size_per_layer_input": ids["__vocab_size__"]}
    config = Gemma4Config(text_config=text, vision_config=None, audio_config=None)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(2445)
            model = Gemma4ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]], pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"]
    )
    model.save_pretrained(path)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"parameters": n_params, "dtype": str(dtype)}


def write_config(workdir: Path, checkpoint: Path, cap: int, device: str) -> Path:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["model"] = {
        "name": "gemma4-e4b-random",
        "source": "local",
        "path": str(checkpoint),
        "dtype": "bfloat16" if device == "cuda" else "float32",
    }
    config["refusal_tune"] = {"enabled": False}
    config["generation"] = {"max_new_tokens": cap, "batch_size": "auto", "shards": 1, "engine": "auto"}
    config["judges"] = ["strmatch"]
    # the benchmark prompt set covers both conditions; held-out answers would add two more model loads
    config["heldout_check"] = False
    config["compute"] = {"device": device, "gpus_per_job": 1 if device == "cuda" else 0}
    path = workdir / "config" / "gpu_e2e.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_gpu_config(workdir: Path, source: Path, device: str, jobs_per_gpu: int = 1) -> Path:
    """``source`` as it is, but every model job on ``device`` (one GPU each, ``jobs_per_gpu`` at once)."""
    config = yaml.safe_load(source.read_text())
    config["compute"] = dict(
        config.get("compute") or {},
        device=device,
        gpus_per_job=1 if device == "cuda" else 0,
        jobs_per_gpu=jobs_per_gpu,
    )
    path = workdir / "config" / f"gpu_e2e_{source.stem}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rule_seconds(workdir: Path) -> dict[str, float]:
    """Wall seconds per benchmarked job, from Snakemake's benchmark files."""
    seconds = {}
    for tsv in sorted((workdir / "benchmarks").rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            header, values = lines[0].split("\t"), lines[1].split("\t")
            seconds[str(tsv.relative_to(workdir / "benchmarks"))] = float(values[header.index("s")])
    return seconds


def answer_lengths(workdir: Path) -> dict[str, dict]:
    import pandas as pd

    summary = {}
    for csv in sorted((workdir / "results" / "answers").glob("*/*.lengths.csv")):
        table = pd.read_csv(csv)
        summary[str(csv.relative_to(workdir / "results" / "answers"))] = {
            "answers": int(len(table)),
            "mean_tokens": float(table["answer_tokens"].mean()),
            "hit_token_limit": int(table["hit_token_limit"].sum()),
        }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder for the summary and logs")
    parser.add_argument("--cap", type=int, default=32, help="answer token cap")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="shrunken model (CPU smoke run of this script)")
    parser.add_argument("--cores", default="all")
    parser.add_argument(
        "--full-vocab",
        action="store_true",
        help="keep E4B's 262,144-token vocabulary (default: the test tokenizer's 262)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="run this config's DAG (e.g. config/gemma3.yaml) on --device instead of the random model",
    )
    parser.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=1,
        help="GPU jobs that share the device at once (compute.jobs_per_gpu; with --config)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the work directory's finished results and run only what is missing",
    )
    args = parser.parse_args(argv)
    out = args.out or args.workdir / "gpu_e2e_report"
    out.mkdir(parents=True, exist_ok=True)
    if args.workdir.exists() and not args.resume:
        shutil.rmtree(args.workdir / "results", ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source, target = REPO / part, args.workdir / part
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

    timings = {}
    if args.config is not None:
        downloads, linked = REPO / "resources" / "downloads", args.workdir / "resources" / "downloads"
        if downloads.is_dir() and not linked.exists():
            linked.symlink_to(downloads.resolve())
        model_info = {"config": str(args.config)}
        config = write_gpu_config(
            args.workdir,
            (REPO / args.config) if not args.config.is_absolute() else args.config,
            args.device,
            args.jobs_per_gpu,
        )
    else:
        start = time.monotonic()
        checkpoint = args.workdir / "checkpoint"
        shutil.rmtree(checkpoint, ignore_errors=True)
        model_info = build_checkpoint(checkpoint, args.tiny, args.device, args.full_vocab)
        timings["build_and_save_checkpoint"] = time.monotonic() - start
        print(
            f"checkpoint: {model_info['parameters'] / 1e9:.2f}B parameters, {model_info['dtype']}, "
            f"saved in {timings['build_and_save_checkpoint']:.0f} s",
            flush=True,
        )
        config = write_config(args.workdir, checkpoint.resolve(), args.cap, args.device)

    snakemake = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(args.workdir / "Snakefile"),
        "--directory",
        str(args.workdir),
        "--configfile",
        str(config),
        "--cores",
        str(args.cores),
        "--resources",
        f"gpu={args.jobs_per_gpu if args.config is not None else 1}",
        "--printshellcmds",
        "--show-failed-logs",
    ] + (["--rerun-incomplete"] if args.resume else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.monotonic()
    with open(out / "snakemake.log", "w") as log_file:
        process = subprocess.run(snakemake, cwd=args.workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    timings["snakemake"] = time.monotonic() - start

    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "model": model_info,
        "cap": args.cap,
        "device": args.device,
        "snakemake_returncode": process.returncode,
        "seconds": timings,
        "rule_seconds": rule_seconds(args.workdir),
        "answer_lengths": answer_lengths(args.workdir),
        "figures": sorted(str(p.relative_to(args.workdir)) for p in (args.workdir / "results").rglob("*.png")),
    }
    try:
        import torch

        summary["torch"] = torch.__version__
        summary["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        summary["transformers"] = __import__("transformers").__version__
    except ImportError:
        pass
    summaries = sorted((args.workdir / "results" / "stats").rglob("summary.md"))
    for path in summaries:
        shutil.copy2(path, out / f"stats_{path.parent.parent.name}_{path.parent.name}_summary.md")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for folder in ("logs", "benchmarks"):
            if (args.workdir / folder).exists():
                tar.add(args.workdir / folder, arcname=folder)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if process.returncode != 0:
        print(f"snakemake failed (exit {process.returncode}); see {out / 'snakemake.log'}", file=sys.stderr)
        print((out / "snakemake.log").read_text()[-6000:], file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
