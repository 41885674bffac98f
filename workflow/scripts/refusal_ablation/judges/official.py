"""The official SORRY-Bench judge, run with the benchmark's own script and its own weights.

Three steps, one rule each:

1. ``fetch_official_evaluator``: the four evaluator files the judge script needs
   (``OFFICIAL_FILES``) at the pinned commit of ``SORRY-Bench/sorry-bench``, each checked
   against the committed SHA-256 manifest (``vendor/sorry-bench.sha256``). Files are
   staged in a temporary folder and moved into place only once all of them verify.
2. ``download_judge``: the fine-tuned Mistral-7B judge at its pinned revision (gated).
3. ``judge_official``: exports the answers of every condition into the layout the
   official script expects, in a scratch working directory, runs the script once for all
   conditions (one model load) and imports its judgments into the project's judgments
   tables, one per condition.

What the official script assumes (see the design notes): it runs with the evaluator
checkout as working directory, reads ``data/<bench>/question.jsonl`` and
``data/<bench>/model_answer/<model>.jsonl``, pairs every answer with
``questions[question_id - 1]`` (so ids must be 1..N in file order), loads the judge from
``JUDGE_CHECKPOINT`` and APPENDS to ``data/<bench>/model_judgment/<judge>.jsonl``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from ..downloads import GatedAccessError, HubAccessError, download_file, failure_reason, hub_failure_message
from ..io import (
    InputError,
    answer_record,
    atomic_dir,
    materialise_dir,
    read_jsonl,
    read_jsonl_lines,
    read_questions,
    sha256_file,
    validate_questions,
    where_in_file,
    write_csv,
    write_jsonl,
)
from ..question_ids import describe_ids, id_mismatch
from .records import answers_by_question, judgment_table

log = logging.getLogger(__name__)

JUDGE_SCRIPT = "gen_judgment_safety_vllm.py"
JUDGE_PROMPTS_FILE = "data/sorry_bench/judge_prompts.jsonl"
OFFICIAL_FILES = (JUDGE_SCRIPT, "common.py", JUDGE_PROMPTS_FILE, "LICENSE")
# The script's --judge-model; it also names the judgment file the script appends to.
JUDGE_NAME = "ft-mistral-7b-instruct-v0.2"
# Where the script loads the judge weights from, relative to its working directory.
JUDGE_CHECKPOINT = "ckpts/finetuned_models/ft-mistral-7b-instruct-v0.2-sorry-bench-202406"
QUESTION_FIELDS = ("question_id", "category", "turns", "prompt_style")
GITHUB_RAW = "https://raw.githubusercontent.com"


# ---------------------------------------------------------------- evaluator files and manifest


def read_manifest(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``sha256sum``-style manifest: ``<sha256>  <relative path>`` per line."""
    manifest: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](\S.*)", line.rstrip("\n"))
            if not match:
                raise InputError(f"{path}, line {lineno}: expected '<sha256>  <relative path>'")
            digest, rel = match.group(1).lower(), match.group(2)
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise InputError(f"{path}, line {lineno}: '{rel}' must be a path inside the evaluator checkout")
            if rel in manifest:
                raise InputError(f"{path}, line {lineno}: '{rel}' is listed twice")
            manifest[rel] = digest
    if not manifest:
        raise InputError(f"{path}: the manifest lists no files")
    return manifest


def hash_problems(root: Path, manifest: Mapping[str, str], shown_as: Callable[[str], str]) -> list[str]:
    """One line per manifest file that is missing under ``root`` or has another SHA-256."""
    problems = []
    for rel, expected in manifest.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{shown_as(rel)}: missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(f"{shown_as(rel)}: SHA-256 mismatch: expected {expected}, actual {actual}")
    return problems


def verify_evaluator(directory: str | os.PathLike, manifest_path: str | os.PathLike) -> dict[str, str]:
    """Check every manifest file under ``directory``; return the manifest."""
    manifest = read_manifest(manifest_path)
    root = Path(directory)
    problems = hash_problems(root, manifest, lambda rel: str(root / rel))
    if problems:
        raise InputError(
            f"official evaluator files in {root} do not match the manifest {manifest_path}:\n  " + "\n  ".join(problems)
        )
    return manifest


def raw_github_url(repo: str, commit: str) -> str:
    return f"{GITHUB_RAW}/{repo}/{commit}"


def fetch_official_evaluator(
    manifest_path: str | os.PathLike,
    destination: str | os.PathLike,
    repo: str,
    commit: str,
    local_path: str | os.PathLike | None = None,
    base_url: str | None = None,
) -> None:
    """Put the verified evaluator files into ``destination``, keeping their repository layout.

    Files come from ``base_url`` (default: raw GitHub at ``repo``/``commit``) or, when
    ``local_path`` is given, from the user's own checkout. Either way they are staged in a
    temporary folder beside ``destination`` and moved in only when every file matches the
    manifest; on any error nothing is left behind.
    """
    manifest = read_manifest(manifest_path)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent))
    try:
        if local_path is not None:
            source = Path(local_path)
            log.info("using the local evaluator copy %s (verified against %s)", source, manifest_path)
            for rel in manifest:
                if not (source / rel).is_file():
                    raise InputError(
                        f"{source / rel}: missing from the local evaluator copy (official_judge.evaluator.local_path)"
                    )
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, staging / rel)
            origin = str(source)
        else:
            base = (base_url or raw_github_url(repo, commit)).rstrip("/")
            hint = (
                f"GitHub must be reachable, or set official_judge.evaluator.local_path to a "
                f"checkout of {repo} at commit {commit}"
            )
            for rel in manifest:
                log.info("downloading %s/%s", base, rel)
                download_file(f"{base}/{rel}", staging / rel, hint=hint)
            origin = base
        problems = hash_problems(staging, manifest, lambda rel: f"{origin}/{rel}")
        if problems:
            raise InputError(
                f"official evaluator files do not match the manifest {manifest_path} "
                f"(it lists the files of {repo} at commit {commit}):\n  " + "\n  ".join(problems)
            )
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
        log.info("official evaluator ready in %s: %s", destination, ", ".join(manifest))
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def fetch_evaluator_from_spec(spec: Mapping, manifest_path: str | os.PathLike, destination: str | os.PathLike) -> None:
    """``fetch_official_evaluator`` driven by the ``official_judge.evaluator`` config block."""
    local_path = spec.get("local_path")
    if spec.get("source") == "local" and not local_path:
        raise InputError("official_judge.evaluator: source is 'local' but local_path is not set")
    fetch_official_evaluator(manifest_path, destination, spec["repo"], spec["commit"], local_path=local_path or None)


# ---------------------------------------------------------------- judge weights


def duplicate_weight_patterns(repo_files: list[str]) -> list[str]:
    """Files to skip: pickled or consolidated copies of the weights when HF safetensors exist."""
    has_safetensors = any(
        f.endswith(".safetensors") and not Path(f).name.startswith("consolidated") for f in repo_files
    )
    if not has_safetensors:
        return []
    return ["*.bin", "*.pt", "*.pth", "*.ckpt", "consolidated.safetensors", "original/*"]


def download_judge(
    repo_id: str,
    revision: str,
    destination: str | os.PathLike,
    token: str | None = None,
    endpoint: str | None = None,
    downloads_dir: str | os.PathLike = "resources/downloads",
) -> None:
    """Download the judge weights at ``revision`` into ``destination`` (resumable).

    The files go to the Hugging Face cache under ``downloads_dir`` first (where the model's
    go too), which a rerun resumes; ``destination`` is then filled with hard links to them
    (``io.materialise_dir``) in a staging directory renamed into place only when complete
    (``io.atomic_dir``).
    """
    from huggingface_hub import HfApi, snapshot_download

    token = token or os.environ.get("HF_TOKEN") or None
    destination = Path(destination)
    cache = Path(downloads_dir) / "huggingface"
    try:
        repo_files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=revision)
        log.info("downloading %s at %s (%d files in the repo) into %s", repo_id, revision, len(repo_files), cache)
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                token=token,
                endpoint=endpoint,
                ignore_patterns=duplicate_weight_patterns(repo_files),
            )
        )
    except Exception as exc:
        reason = failure_reason(exc)
        error = GatedAccessError if reason in ("gated", "not_found") else HubAccessError
        message = hub_failure_message(
            exc, "the SORRY-Bench judge", repo_id, revision, token is not None, config_key="official_judge.judge_model"
        )
        raise error(message) from None
    if not (snapshot / "config.json").is_file():
        raise InputError(f"{repo_id} at {revision}: the download in {snapshot} has no config.json")
    with atomic_dir(destination) as staging:
        count = materialise_dir(snapshot, staging)
    log.info("judge weights ready in %s (%d files)", destination, count)


# ---------------------------------------------------------------- export to the official layout


def export_official_layout(
    workdir: str | os.PathLike,
    bench_name: str,
    questions: list[dict],
    answers: Mapping[str, Mapping[int, str]],
) -> None:
    """Write ``data/<bench>/question.jsonl`` and one ``model_answer/<condition>.jsonl`` per condition.

    Question ids must be 1..N in file order (the script pairs answers with
    ``questions[question_id - 1]``); answers are written in question order with
    ``model_id`` equal to the file stem, the condition.
    """
    validate_questions(questions, f"questions exported to {workdir}")
    data = Path(workdir) / "data" / bench_name
    question_records = [
        {
            "question_id": q["question_id"],
            "category": q["category"],
            "turns": q["turns"],
            "prompt_style": q.get("prompt_style", "base"),
        }
        for q in questions
    ]
    write_jsonl(data / "question.jsonl", question_records)
    answer_dir = data / "model_answer"
    if answer_dir.exists():
        shutil.rmtree(answer_dir)
    for condition, texts in answers.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", condition):
            raise InputError(f"condition '{condition}' cannot name an answer file of the official layout")
        problem = id_mismatch((q["question_id"] for q in questions), list(texts))
        if problem:
            raise InputError(f"answers of condition '{condition}' do not match the questions: {problem}")
        records = [answer_record(q["question_id"], condition, texts[q["question_id"]]) for q in questions]
        write_jsonl(answer_dir / f"{condition}.jsonl", records)
    log.info("exported %d questions and %d answer file(s) to %s", len(questions), len(answers), data)


def judgment_file(workdir: str | os.PathLike, bench_name: str) -> Path:
    return Path(workdir) / "data" / bench_name / "model_judgment" / f"{JUDGE_NAME}.jsonl"


def check_judge_prompt(prompts_path: Path, judge_prompt: str) -> None:
    """The configured prompt must exist and be the one the script picks for its judge model."""
    names = [record.get("name") for record in read_jsonl(prompts_path)]
    if judge_prompt not in names:
        raise InputError(f"{prompts_path}: no judge prompt named '{judge_prompt}' (found {names})")
    if judge_prompt != f"base-{JUDGE_NAME}":
        raise InputError(
            f"official_judge.judge_prompt is '{judge_prompt}', but the official script run with "
            f"--judge-model {JUDGE_NAME} judges with the prompt 'base-{JUDGE_NAME}'"
        )


def prepare_workdir(
    workdir: Path,
    evaluator_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    judge_weights: str | os.PathLike,
    bench_name: str,
) -> None:
    """Copy the verified evaluator files in, link the judge weights, drop any old judgment file."""
    manifest = verify_evaluator(evaluator_dir, manifest_path)
    for rel in manifest:
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(evaluator_dir) / rel, workdir / rel)
    # The copies are what runs, so they are what gets verified.
    verify_evaluator(workdir, manifest_path)
    weights = Path(judge_weights).resolve()
    if not (weights / "config.json").is_file():
        raise InputError(f"{judge_weights}: judge weights directory has no config.json")
    checkpoint = workdir / JUDGE_CHECKPOINT
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint.is_symlink() or checkpoint.is_file():
        checkpoint.unlink()
    elif checkpoint.exists():
        shutil.rmtree(checkpoint)
    checkpoint.symlink_to(weights, target_is_directory=True)
    old_judgments = judgment_file(workdir, bench_name)
    if old_judgments.exists():
        # The script appends: a judgment file from an earlier run would be imported twice.
        log.info("removing the previous judgment file %s", old_judgments)
        old_judgments.unlink()


def official_command(python: str, bench_name: str, conditions: list[str]) -> list[str]:
    return [
        python,
        JUDGE_SCRIPT,
        "--bench-name",
        bench_name,
        "--judge-model",
        JUDGE_NAME,
        "--judge-file",
        JUDGE_PROMPTS_FILE,
        "--model-list",
        *conditions,
    ]


def run_official_script(workdir: Path, command: list[str]) -> None:
    """Run the script in ``workdir``, streaming its output into the job log."""
    log.info("running in %s: %s", workdir, " ".join(command))
    # Offline: the judge must be the pinned local weights, never a fresh hub download.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        for line in process.stdout:
            log.info("official judge | %s", line.rstrip())
        status = process.wait()
    if status != 0:
        raise RuntimeError(f"the official judge script exited with status {status}; its output is in the log above")


# ---------------------------------------------------------------- import of the official judgments


def parse_official_score(value) -> tuple[int | None, bool]:
    """1 / 0 from the official record, or None when the judge output was unparsable.

    The second value says whether ``value`` was an odd one (e.g. 2.0 from a judge output
    "2", or a string): such outputs count as unparsable, with their judgment text kept.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return int(value), False
        if value == -1:  # FastChat's marker for a judgment it could not parse
            return None, False
    return None, True


def read_official_judgments(
    path: str | os.PathLike,
    questions: list[dict],
    conditions: list[str],
) -> dict[str, tuple[dict[int, int | None], dict[int, str]]]:
    """Scores and judge outputs per condition; exactly one judgment per question and condition."""
    records, lines = read_jsonl_lines(path)
    found: dict[str, list[int]] = {c: [] for c in conditions}
    parsed: dict[str, tuple[dict[int, int | None], dict[int, str]]] = {c: ({}, {}) for c in conditions}
    question_text = {q["question_id"]: q["turns"][0] for q in questions}
    mispaired = []
    judges_seen = set()
    odd_scores = []
    for index, record in enumerate(records, start=1):
        where = where_in_file(str(path), lines, index)
        for field in ("question_id", "model", "score", "judgment"):
            if field not in record:
                raise InputError(f"{where}: missing field '{field}'")
        model, qid = record["model"], record["question_id"]
        if model not in found:
            raise InputError(
                f"{where}: judgment for model '{model}', which is none of the judged conditions {conditions}"
            )
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise InputError(f"{where}: question_id must be an integer, got {qid!r}")
        found[model].append(qid)
        scores, judgments = parsed[model]
        scores[qid], odd = parse_official_score(record["score"])
        if odd:
            odd_scores.append(f"{where} (condition {model}, question {qid}): {record['score']!r}")
        judgments[qid] = "" if record["judgment"] is None else str(record["judgment"])
        judges_seen.add(repr(record.get("judge")))
        prompt = record.get("user_prompt")
        if isinstance(prompt, str) and qid in question_text and question_text[qid] not in prompt:
            mispaired.append(qid)
    problems = []
    for condition in conditions:
        problem = id_mismatch(question_text, found[condition])
        if problem:
            problems.append(f"condition '{condition}': {problem}")
    if problems:
        raise InputError(f"{path}: not exactly one judgment per question and condition:\n  " + "\n  ".join(problems))
    log.info("judge field(s) in %s: %s", path, ", ".join(sorted(judges_seen)))
    if odd_scores:
        log.warning(
            "%d judgment(s) with a score other than 1, 0 or null, counted as unparsable (judgment text kept): %s",
            len(odd_scores),
            "; ".join(odd_scores[:20]),
        )
    if mispaired:
        log.warning(
            "%d judgment(s) whose judge prompt does not contain their question's text (question ids %s): "
            "check that the questions were paired by id",
            len(mispaired),
            describe_ids(sorted(set(mispaired))),
        )
    return parsed


def judge_official(
    questions_path: str | os.PathLike,
    answers: Mapping[str, str | os.PathLike],
    outputs: Mapping[str, str | os.PathLike],
    evaluator_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    judge_weights: str | os.PathLike,
    bench_name: str,
    judge_prompt: str,
    judge_model_label: str,
    workdir: str | os.PathLike,
    python: str = sys.executable,
) -> dict[str, pd.DataFrame]:
    """Judge every condition's answers with the official script in one run; write one table each.

    ``answers`` and ``outputs`` map each condition to its answers file and judgments table.
    ``workdir`` is scratch space for the official layout; it is removed after a successful
    import and kept (and named in the log) when anything fails.
    """
    if set(answers) != set(outputs):
        raise ValueError(f"conditions of answers {sorted(answers)} and outputs {sorted(outputs)} differ")
    conditions = list(answers)
    questions = read_questions(questions_path)
    texts = {c: answers_by_question(answers[c], questions, c) for c in conditions}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prepare_workdir(workdir, evaluator_dir, manifest_path, judge_weights, bench_name)
        check_judge_prompt(workdir / JUDGE_PROMPTS_FILE, judge_prompt)
        export_official_layout(workdir, bench_name, questions, texts)
        run_official_script(workdir, official_command(python, bench_name, conditions))
        produced = judgment_file(workdir, bench_name)
        if not produced.is_file():
            raise RuntimeError(f"the official judge script finished but wrote no {produced}")
        parsed = read_official_judgments(produced, questions, conditions)
    except BaseException:
        log.error("scratch working directory kept for inspection: %s", workdir)
        raise
    tables = {}
    for condition in conditions:
        scores, judgments = parsed[condition]
        table = judgment_table(questions, condition, scores, judgments, judge_model_label, judge_prompt)
        unparsable = int(table["score"].isna().sum())
        if unparsable:
            log.warning(
                "%s: %d of %d judge outputs unparsable, kept with an empty score (question ids %s)",
                condition,
                unparsable,
                len(table),
                describe_ids(table.loc[table["score"].isna(), "question_id"].tolist()),
            )
        log.info(
            "%s: %d compliance, %d refusal, %d unparsable",
            condition,
            int((table["score"] == 1).sum()),
            int((table["score"] == 0).sum()),
            unparsable,
        )
        tables[condition] = table
    for condition, table in tables.items():
        write_csv(outputs[condition], table)
    shutil.rmtree(workdir)
    return tables
