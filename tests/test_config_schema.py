"""The config schema accepts both shipped configs and names the offending key otherwise."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def load(name):
    return yaml.safe_load((REPO / "config" / name).read_text())


def assert_rejected_naming(config, mutate, fragment):
    """The schema rejects ``config`` changed by ``mutate``, and its message names ``fragment``."""
    config = copy.deepcopy(config)
    mutate(config)
    with pytest.raises(WorkflowError) as err:
        validate(config, schema=SCHEMA)
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "gemma3.yaml"])
def test_shipped_configs_validate(name):
    validate(load(name), schema=SCHEMA)


def test_reference_config_holds_the_reference_pins():
    config = load("config.yaml")
    assert config["seed"] == 2445
    assert config["model"]["repo_id"] == "google/gemma-4-E4B-it"
    assert config["model"]["revision"] == "fee6332c1abaafb77f6f9624236c63aa2f1d0187"
    assert config["benchmark"]["revision"] == "612a4e1f45db8adf884fa62318ddf9fa1c6e75e9"
    assert config["construction"]["sha256"] == ("dd76fbb1d78d61aed045f2417e9b3fb5137b7572bda022d322ee2e7b36a29c47")
    assert config["construction"]["construction_areas"] == 8
    assert config["generation"]["max_new_tokens"] == 4096
    assert config["judges"] == ["official"]
    assert config["edit"]["methods"] == ["reference"]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["stats"].update(alpah=0.1), "alpah"),
        (lambda c: c["generation"].update(shards="two"), "shards"),
        (lambda c: c["model"].update(revision="main"), "revision"),
        (lambda c: c.update(judges=["gpt4"]), "judges"),
        (lambda c: c["edit"].update(methods=["reference", "mystery"]), "methods"),
        (lambda c: c["generation"].update(engine="fastest"), "engine"),
    ],
)
def test_bad_config_names_the_key(mutate, fragment):
    assert_rejected_naming(load("config.yaml"), mutate, fragment)


def test_reference_config_measures_the_cost_with_the_pinned_xstest():
    cost = load("config.yaml")["cost"]
    assert cost["enabled"] is True
    assert cost["kl"]["max_tokens"] == 256 and cost["kl"]["promptsets"] == ["heldout", "xstest"]
    assert cost["xstest"]["sha256"] == "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a"
    assert (
        "paul-rottger/exaggerated-safety/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts.csv"
        in (cost["xstest"]["url"])
    )


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["cost"]["kl"].update(resident="yes"), "resident"),
        (lambda c: c["cost"]["kl"].update(promptsets=["benchmark"]), "promptsets"),
        (lambda c: c["cost"]["xstest"].pop("sha256"), "sha256"),
        (lambda c: c["cost"].pop("kl"), "kl"),
    ],
)
def test_bad_cost_config_names_the_key(mutate, fragment):
    assert_rejected_naming(load("config.yaml"), mutate, fragment)


def test_schema_engines_are_the_engines_the_code_knows():
    from refusal_ablation.engine import ENGINES

    schema = yaml.safe_load(Path(SCHEMA).read_text())
    assert schema["properties"]["generation"]["properties"]["engine"]["enum"] == list(ENGINES)


@pytest.mark.parametrize("value", [0, -1, "4", 1.5])
def test_jobs_per_gpu_must_be_a_positive_integer(value):
    assert_rejected_naming(load("config.yaml"), lambda c: c["compute"].update(jobs_per_gpu=value), "jobs_per_gpu")


def test_jobs_per_gpu_defaults_to_one():
    config = copy.deepcopy(load("config.yaml"))
    config["compute"].pop("jobs_per_gpu", None)
    validate(config, schema=SCHEMA)
    assert config["compute"]["jobs_per_gpu"] == 1


def _evaluator(config):
    return config["official_judge"]["evaluator"]


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c.pop("official_judge"), "official_judge"),
        (lambda c: c["official_judge"].pop("judge_prompt"), "judge_prompt"),
        (lambda c: c["official_judge"].update(judge_promt="x"), "judge_promt"),
        (lambda c: c["official_judge"]["judge_model"].update(revision="main"), "revision"),
        (lambda c: c["official_judge"]["judge_model"].pop("repo_id"), "repo_id"),
        (lambda c: _evaluator(c).update(commit="7da10ad"), "commit"),
        (lambda c: _evaluator(c).update(source="svn"), "source"),
        (lambda c: _evaluator(c).update(source="local"), "local_path"),
        (lambda c: _evaluator(c).update(source="local", local_path=""), "local_path"),
        (lambda c: c["official_judge"].update(bench_name="sorry bench/../x"), "bench_name"),
    ],
)
def test_bad_official_judge_names_the_key(mutate, fragment):
    assert_rejected_naming(load("config.yaml"), mutate, fragment)


def test_official_judge_block_is_needed_only_by_the_official_judge():
    demo = load("demo.yaml")
    assert "official_judge" not in demo and demo["judges"] == ["strmatch"]
    validate(demo, schema=SCHEMA)
    local = copy.deepcopy(load("config.yaml"))
    _evaluator(local).update(source="local", local_path="/data/sorry-bench")
    validate(local, schema=SCHEMA)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["refusal_tune"].pop("epochs"), "epochs"),
        (lambda c: c["refusal_tune"].update(refusal="   "), "refusal"),
        (lambda c: c["refusal_tune"].update(learning_rate=0), "learning_rate"),
        (lambda c: c["refusal_tune"].update(batch_size=True), "batch_size"),
        (lambda c: c["refusal_tune"].update(prompts_per_label_per_area=0), "prompts_per_label_per_area"),
    ],
)
def test_bad_refusal_tune_names_the_key(mutate, fragment):
    assert_rejected_naming(load("demo.yaml"), mutate, fragment)


def test_a_disabled_refusal_tune_needs_no_settings():
    config = copy.deepcopy(load("demo.yaml"))
    config["refusal_tune"] = {"enabled": False}
    validate(config, schema=SCHEMA)
