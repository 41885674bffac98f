"""A failed Hub download says what was fetched, why it failed and what to do: one message
for the model (prepare_model), the benchmark (benchmark_questions) and the judge weights
(download_judge). The failures are real: offline mode, and an endpoint nothing listens on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs the three library calls in a fresh process (huggingface_hub reads its settings from
# the environment at import) and prints each failure's type and message.
FETCH_ALL = r"""
import json, sys
sys.path.insert(0, "workflow/scripts")
from refusal_ablation.model_prep import prepare_model
from refusal_ablation.benchmark import prepare_benchmark_questions
from refusal_ablation.judges.official import download_judge
out = sys.argv[1]
calls = {
    "model": lambda: prepare_model(
        {"name": "m", "source": "huggingface", "repo_id": "google/gemma-4-E4B-it",
         "revision": "fee6332c1abaafb77f6f9624236c63aa2f1d0187", "dtype": "bfloat16"},
        out + "/models/m", downloads_dir=out + "/downloads"),
    "benchmark": lambda: prepare_benchmark_questions(
        {"source": "huggingface", "repo_id": "sorry-bench/sorry-bench-202503",
         "revision": "612a4e1f45db8adf884fa62318ddf9fa1c6e75e9", "file": "question.jsonl",
         "prompt_style": "base"}, out + "/questions/benchmark.jsonl"),
    "judge": lambda: download_judge(
        "sorry-bench/ft-mistral-7b-instruct-v0.2-sorry-bench-202406",
        "79ab44668cef557414cb5e15c726a56ebca9cf1e", out + "/models/judge"),
}
result = {}
for name, call in calls.items():
    try:
        call()
        result[name] = None
    except Exception as exc:
        result[name] = [type(exc).__name__, str(exc)]
print(json.dumps(result))
"""

PAGES = {
    "model": "https://huggingface.co/google/gemma-4-E4B-it",
    "benchmark": "https://huggingface.co/datasets/sorry-bench/sorry-bench-202503",
    "judge": "https://huggingface.co/sorry-bench/ft-mistral-7b-instruct-v0.2-sorry-bench-202406",
}


def fetch_all(tmp_path, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT")}
    environment.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DOWNLOAD_TIMEOUT="5", HF_HUB_ETAG_TIMEOUT="5", **env)
    done = subprocess.run(
        [sys.executable, "-c", FETCH_ALL, str(tmp_path / "out")],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "env, why",
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        # nothing listens on port 9 of this machine: a real failed connection, as without network
        ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}, "no network connection"),
    ],
)
def test_offline_hub_failures_say_what_why_and_what_to_do(tmp_path, env, why):
    result = fetch_all(tmp_path, **env)
    for name, page in PAGES.items():
        assert result[name] is not None, f"{name}: fetch did not fail"
        kind, message = result[name]
        assert kind in ("HubAccessError", "ModelSourceError", "GatedAccessError"), (name, kind, message)
        repo = page.split("huggingface.co/")[1].removeprefix("datasets/")
        assert "could not fetch" in message and repo in message, message
        assert why in message, message
        assert "HF_TOKEN is not set" in message and page in message, message
        assert "To do:" in message and "huggingface.co/settings/tokens" in message, message
    # nothing half-written is left where a later run would take it as finished
    assert not (tmp_path / "out/models/m").exists()
    assert not (tmp_path / "out/models/judge").exists()
    assert not (tmp_path / "out/questions/benchmark.jsonl").exists()
