"""The GPU allocator, with real concurrent processes and a simulated device count."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from refusal_ablation.gpus import allocate_gpus, jobs_per_gpu_from_env, share_each_gpu

# fork: the workers need this module's functions without re-importing the test session
CTX = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def host_without_assigned_gpus(monkeypatch):
    """Every test starts as a plain workstation job: no devices pre-assigned, not in SLURM."""
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID", "REFUSAL_ABLATION_JOBS_PER_GPU"):
        monkeypatch.delenv(name, raising=False)


def _hold_devices(lock_dir, n, n_devices, hold_s, occupancy_dir, results):
    """A job: take n devices, mark each as occupied while running, report what it saw."""
    with allocate_gpus(n, lock_dir=lock_dir, n_devices=n_devices, poll_s=0.02) as devices:
        visible = os.environ["CUDA_VISIBLE_DEVICES"]
        collisions = []
        markers = []
        for device in devices:
            marker = Path(occupancy_dir) / f"device-{device}"
            try:
                # O_EXCL fails if another job is using the device right now
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                markers.append(marker)
            except FileExistsError:
                collisions.append(device)
        time.sleep(hold_s)
        for marker in markers:
            marker.unlink()
    results.put(
        {
            "devices": devices,
            "visible": visible,
            "collisions": collisions,
            "after": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }
    )


def _run_jobs(tmp_path, n_jobs, n, n_devices, hold_s=0.15):
    occupancy = tmp_path / "occupancy"
    occupancy.mkdir()
    results = CTX.Queue()
    jobs = [
        CTX.Process(
            target=_hold_devices,
            args=(tmp_path / "locks", n, n_devices, hold_s, occupancy, results),
        )
        for _ in range(n_jobs)
    ]
    for job in jobs:
        job.start()
    reports = [results.get(timeout=60) for _ in jobs]
    for job in jobs:
        job.join(timeout=10)
        assert job.exitcode == 0
    return reports


@pytest.mark.parametrize(("n_jobs", "n", "n_devices"), [(8, 1, 3), (6, 2, 3), (4, 2, 4)])
def test_concurrent_jobs_never_share_a_device(tmp_path, n_jobs, n, n_devices):
    reports = _run_jobs(tmp_path, n_jobs=n_jobs, n=n, n_devices=n_devices)

    for report in reports:
        assert report["collisions"] == []
        assert len(report["devices"]) == n
        assert len(set(report["devices"])) == n
        assert set(report["devices"]) <= {str(i) for i in range(n_devices)}
        assert report["visible"] == ",".join(report["devices"])
        assert report["after"] is None


def test_more_jobs_than_devices_all_finish_and_use_every_device(tmp_path):
    reports = _run_jobs(tmp_path, n_jobs=6, n=1, n_devices=2, hold_s=0.3)

    used = {device for report in reports for device in report["devices"]}
    assert used == {"0", "1"}


def _hold_until_released(lock_dir, n, n_devices, held, release):
    with allocate_gpus(n, lock_dir=lock_dir, n_devices=n_devices):
        held.set()
        release.wait(timeout=30)


def _wait_for_one(lock_dir, n_devices, acquired, results):
    with allocate_gpus(1, lock_dir=lock_dir, n_devices=n_devices, poll_s=0.02) as devices:
        acquired.set()
        results.put(devices)


def test_job_waits_while_all_devices_are_taken(tmp_path):
    lock_dir = tmp_path / "locks"
    held, release, acquired = CTX.Event(), CTX.Event(), CTX.Event()
    results = CTX.Queue()
    # the holder is a separate job: a forked child would inherit the parent's lock fds
    holder = CTX.Process(target=_hold_until_released, args=(lock_dir, 2, 2, held, release))
    holder.start()
    assert held.wait(timeout=10)
    waiter = CTX.Process(target=_wait_for_one, args=(lock_dir, 2, acquired, results))
    waiter.start()
    try:
        assert not acquired.wait(timeout=1.0), "a job got a device that another job holds"
    finally:
        release.set()
    assert acquired.wait(timeout=10), "the waiting job did not get a released device"
    assert results.get(timeout=10)[0] in {"0", "1"}
    for job in (holder, waiter):
        job.join(timeout=10)
        assert job.exitcode == 0


def test_timeout_when_devices_stay_taken(tmp_path):
    lock_dir = tmp_path / "locks"
    with allocate_gpus(1, lock_dir=lock_dir, n_devices=1):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="fewer than 1 of 1"):
            with allocate_gpus(1, lock_dir=lock_dir, n_devices=1, timeout_s=0.3, poll_s=0.05):
                pass
        assert time.monotonic() - start < 5


def _take_and_die(lock_dir, taken):
    with allocate_gpus(1, lock_dir=lock_dir, n_devices=1):
        taken.set()
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)


def test_killed_job_releases_its_device(tmp_path):
    lock_dir = tmp_path / "locks"
    taken = CTX.Event()
    victim = CTX.Process(target=_take_and_die, args=(lock_dir, taken))
    victim.start()
    assert taken.wait(timeout=10)
    victim.join(timeout=10)
    assert victim.exitcode == -signal.SIGKILL

    with allocate_gpus(1, lock_dir=lock_dir, n_devices=1, timeout_s=5, poll_s=0.05) as devices:
        assert devices == ["0"]


def test_exception_in_job_releases_devices_and_restores_environment(tmp_path, monkeypatch):
    lock_dir = tmp_path / "locks"
    with pytest.raises(RuntimeError, match="job failed"):
        with allocate_gpus(2, lock_dir=lock_dir, n_devices=2):
            assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
            raise RuntimeError("job failed")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "CUDA_DEVICE_ORDER" not in os.environ
    with allocate_gpus(2, lock_dir=lock_dir, n_devices=2, timeout_s=1) as devices:
        assert sorted(devices) == ["0", "1"]


def test_zero_gpus_is_a_cpu_job_and_touches_nothing(tmp_path):
    lock_dir = tmp_path / "locks"
    with allocate_gpus(0, lock_dir=lock_dir, n_devices=0) as devices:
        assert devices == []
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not lock_dir.exists()


def test_asking_for_more_devices_than_exist_fails_at_once(tmp_path):
    with pytest.raises(RuntimeError, match=r"asks for 3 GPU\(s\) but only 2"):
        with allocate_gpus(3, lock_dir=tmp_path / "locks", n_devices=2):
            pass


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_bad_gpu_count_is_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        with allocate_gpus(bad, lock_dir=tmp_path / "locks", n_devices=2):
            pass


def test_preset_visible_devices_are_the_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    reports = _run_jobs(tmp_path, n_jobs=4, n=1, n_devices=8)

    assert {device for report in reports for device in report["devices"]} == {"5", "7"}
    assert all(report["collisions"] == [] for report in reports)
    assert all(report["after"] == "5,7" for report in reports)


def test_devices_slurm_assigned_to_the_job_are_used_without_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    lock_dir = tmp_path / "locks"
    with allocate_gpus(1, lock_dir=lock_dir) as devices:
        assert devices == ["0"]
        # another job of the same allocation would not be blocked: nothing is locked
        with allocate_gpus(1, lock_dir=lock_dir, timeout_s=0.2) as again:
            assert again == ["0"]
    assert not lock_dir.exists()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_slurm_allocation_larger_than_the_job_is_shared_by_locking(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    reports = _run_jobs(tmp_path, n_jobs=4, n=1, n_devices=None, hold_s=0.3)

    assert all(report["collisions"] == [] for report in reports)
    assert {device for report in reports for device in report["devices"]} == {"0", "1"}
    lock_names = [path.name for path in (tmp_path / "locks").iterdir()]
    assert len(lock_names) == 2 and all("slurm4242" in name for name in lock_names)


def test_empty_visible_devices_means_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="only 0 can be used"):
        with allocate_gpus(1, lock_dir=tmp_path / "locks", n_devices=4):
            pass


def test_lock_dir_comes_from_the_environment(tmp_path, monkeypatch):
    lock_dir = tmp_path / "from-env"
    monkeypatch.setenv("REFUSAL_ABLATION_GPU_LOCK_DIR", str(lock_dir))
    with allocate_gpus(1, n_devices=1):
        assert len(list(lock_dir.glob("gpu-*-0.lock"))) == 1


def test_module_imports_without_torch(tmp_path):
    import subprocess

    scripts = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
    # a meta-path finder that refuses torch makes any torch import fail loudly
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is not allowed here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.path.insert(0, {str(scripts)!r})\n"
        "from refusal_ablation.gpus import allocate_gpus\n"
        f"with allocate_gpus(1, lock_dir={str(tmp_path)!r}, n_devices=1) as d:\n"
        "    print(d)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['0']", "False"]


SNAKEFILE_WITH_GPU_JOBS = """\
import json, os, sys, time

sys.path.insert(0, {scripts!r})
from refusal_ablation.gpus import allocate_gpus, jobs_per_gpu_from_env, share_each_gpu


rule all:
    input:
        expand("shard-{{shard}}.json", shard=range(4)),


rule generate_answers:
    output:
        "shard-{{shard}}.json",
    resources:
        gpu=1,
    run:
        running = os.environ["RUNNING_JOBS_DIR"]
        with allocate_gpus(resources.gpu, n_devices=2, poll_s=0.05) as devices:
            started = time.time()
            marker = os.path.join(running, wildcards.shard)
            open(marker, "w").close()
            # hold the device until a second job runs too (or 20 s), however slow the host
            while len(os.listdir(running)) < 2 and time.time() - started < 20:
                time.sleep(0.05)
            time.sleep(0.2)
            os.remove(marker)
            record = dict(devices=devices, visible=os.environ["CUDA_VISIBLE_DEVICES"],
                          started=started, ended=time.time())
        with open(output[0], "w") as fh:
            json.dump(record, fh)
"""


@pytest.mark.slow
def test_snakemake_gpu_slots_give_each_running_job_its_own_device(tmp_path):
    import json
    import subprocess

    scripts = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
    (tmp_path / "Snakefile").write_text(SNAKEFILE_WITH_GPU_JOBS.format(scripts=str(scripts)))
    (tmp_path / "running").mkdir()
    env = {
        **os.environ,
        "REFUSAL_ABLATION_GPU_LOCK_DIR": str(tmp_path / "locks"),
        "RUNNING_JOBS_DIR": str(tmp_path / "running"),
    }
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2", "--workflow-profile", "none"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    jobs = [json.loads((tmp_path / f"shard-{i}.json").read_text()) for i in range(4)]
    assert all(job["visible"] == job["devices"][0] for job in jobs)
    for i, job in enumerate(jobs):
        for other in jobs[i + 1 :]:
            overlap = job["started"] < other["ended"] and other["started"] < job["ended"]
            if overlap:
                assert job["devices"] != other["devices"]
    # two slots: both devices are in use, and never more than two jobs at once
    assert {job["devices"][0] for job in jobs} == {"0", "1"}
    for job in jobs:
        running = sum(other["started"] <= job["started"] < other["ended"] for other in jobs)
        assert running <= 2


@contextlib.contextmanager
def _another_job(*args, **kwargs):
    """``allocate_gpus`` as a separate job would call it: without the enclosing job's devices."""
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    with allocate_gpus(*args, **kwargs) as devices:
        yield devices


def test_jobs_per_gpu_shares_a_device_and_spreads_over_devices(tmp_path):
    lock_dir = tmp_path / "locks"
    with _another_job(1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2) as first:
        with _another_job(1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2) as second:
            # slot 0 of every device is taken before any device gets a second job
            assert sorted(first + second) == ["0", "1"]
            with _another_job(1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2) as third:
                with _another_job(1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2) as fourth:
                    assert sorted(third + fourth) == ["0", "1"]
                    # four slots, four jobs: a fifth waits and times out
                    with pytest.raises(TimeoutError):
                        with _another_job(
                            1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2, timeout_s=0.2, poll_s=0.02
                        ):
                            pass
        # a freed slot is taken again
        with _another_job(1, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=2, timeout_s=1, poll_s=0.02) as again:
            assert len(again) == 1


def test_a_two_gpu_job_never_takes_two_slots_of_one_device(tmp_path):
    lock_dir = tmp_path / "locks"
    with _another_job(2, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=3) as devices:
        assert devices == ["0", "1"]
        with _another_job(2, lock_dir=lock_dir, n_devices=2, jobs_per_gpu=3) as also:
            assert also == ["0", "1"]


def test_jobs_per_gpu_comes_from_the_environment(tmp_path, monkeypatch):
    lock_dir = tmp_path / "locks"
    monkeypatch.setenv("REFUSAL_ABLATION_JOBS_PER_GPU", "2")
    with _another_job(1, lock_dir=lock_dir, n_devices=1):
        with _another_job(1, lock_dir=lock_dir, n_devices=1, timeout_s=1, poll_s=0.02) as shared:
            assert shared == ["0"]
    monkeypatch.setenv("REFUSAL_ABLATION_JOBS_PER_GPU", "0")
    with pytest.raises(ValueError, match="compute.jobs_per_gpu"):
        with _another_job(1, lock_dir=lock_dir, n_devices=1):
            pass


def test_share_each_gpu_hands_the_setting_to_jobs(monkeypatch):
    monkeypatch.delenv("REFUSAL_ABLATION_JOBS_PER_GPU", raising=False)
    share_each_gpu(3)
    assert jobs_per_gpu_from_env() == 3
    with pytest.raises(ValueError, match="compute.jobs_per_gpu"):
        share_each_gpu(0)
