"""The conda envs and requirements.txt pin the same versions, and the stacks stay apart."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = REPO / "workflow" / "envs"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalise(name)] = version
    return pins


def env_pins(env_file: Path) -> dict[str, str]:
    spec = yaml.safe_load(env_file.read_text())
    pins = {}
    for dep in spec["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            if "==" in entry:
                name, version = entry.split("==")
            else:
                name, _, version = entry.partition("=")
            pins[_normalise(name)] = version
    return pins


def test_every_env_is_exactly_pinned_and_lists_python():
    for env_file in sorted(ENVS.glob("*.yaml")):
        spec = yaml.safe_load(env_file.read_text())
        assert spec["channels"] == ["conda-forge", "nodefaults"], env_file
        pins = env_pins(env_file)
        assert "python" in pins, f"{env_file.name} does not list python"
        for name, version in pins.items():
            assert re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version), f"{env_file.name}: {name} not pinned exactly"


def test_requirements_agree_with_torch_and_stats_envs():
    requirements = requirement_pins()
    for env in ("torch.yaml", "stats.yaml"):
        for name, version in env_pins(ENVS / env).items():
            if name in ("python", "pip"):
                continue
            assert name in requirements, f"{env}: {name} is missing from requirements.txt"
            assert requirements[name] == version, (
                f"{env} pins {name}=={version}, requirements.txt pins {requirements[name]}"
            )


def test_judge_stack_never_mixes_with_the_model_stack():
    judge = env_pins(ENVS / "judge.yaml")
    assert "vllm" in judge
    for name in ("transformers", "accelerate", "gguf"):
        assert name not in env_pins(ENVS / "stats.yaml")
    assert "vllm" not in env_pins(ENVS / "torch.yaml")
    assert "vllm" not in requirement_pins()
