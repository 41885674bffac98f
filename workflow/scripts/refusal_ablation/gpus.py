"""GPU slots for jobs that share one host.

Snakemake's ``--resources gpu=N`` caps how many GPUs the running jobs ask for in total,
but it does not say which device a job should use: two GPU jobs on one workstation both
see every GPU. ``allocate_gpus`` gives each job its own devices: it takes an exclusive
``flock`` on one lock file per device and sets ``CUDA_VISIBLE_DEVICES`` to the devices it
holds, for as long as the job runs. The kernel drops a ``flock`` when its process ends,
so a crashed or killed job never leaves a device taken.

Which devices a job may choose from (the pool):

* ``CUDA_VISIBLE_DEVICES`` is set: exactly those entries. Under SLURM with exactly as many
  entries as the job asked for, the scheduler has already given these devices to this
  job alone, so they are used as they are, without locks.
* otherwise: every device of the host (``n_devices``, else ``nvidia-smi``, else torch).

Several jobs may share one device (``compute.jobs_per_gpu``, which the workflow passes on
as ``$REFUSAL_ABLATION_JOBS_PER_GPU``): a small model leaves a large GPU idle while each job
spends most of its time starting up and loading. Each device then has that many slot
locks, and a job takes one slot on each of its devices; slots are filled across devices
before a second job goes onto any one device. Under SLURM with the devices given to the job
alone (above) nothing is shared: the scheduler decides.

No torch import at module level: the stats environment imports this module too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR_ENV = "REFUSAL_ABLATION_GPU_LOCK_DIR"
JOBS_PER_GPU_ENV = "REFUSAL_ABLATION_JOBS_PER_GPU"
DEFAULT_LOCK_DIR = Path("/tmp/refusal_ablation_gpu_locks")

logger = logging.getLogger("refusal_ablation.gpus")


def default_lock_dir() -> Path:
    """Where the per-device lock files live: $REFUSAL_ABLATION_GPU_LOCK_DIR, else a folder
    in /tmp, which every user of the host shares (so does the GPU)."""
    configured = os.environ.get(LOCK_DIR_ENV)
    return Path(configured) if configured else DEFAULT_LOCK_DIR


def jobs_per_gpu_from_env() -> int:
    """How many jobs may share one device: $REFUSAL_ABLATION_JOBS_PER_GPU, else 1."""
    value = os.environ.get(JOBS_PER_GPU_ENV, "").strip()
    if not value:
        return 1
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ValueError(f"${JOBS_PER_GPU_ENV} must be a positive integer (config compute.jobs_per_gpu), got {value!r}")
    return jobs


def share_each_gpu(jobs_per_gpu: int) -> None:
    """Let ``jobs_per_gpu`` jobs started from this process share each device (sets the variable they read)."""
    if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
        raise ValueError(f"compute.jobs_per_gpu must be a positive integer, got {jobs_per_gpu!r}")
    os.environ[JOBS_PER_GPU_ENV] = str(jobs_per_gpu)


def count_host_gpus() -> int:
    """Number of CUDA devices on this host, found without initialising CUDA here.

    ``nvidia-smi -L`` first (a separate process); torch only as a fallback: its count asks
    NVML first, which leaves ``CUDA_VISIBLE_DEVICES`` still effective afterwards.
    """
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False)
        if listing.returncode == 0:
            return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def _parse_visible_devices(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _lock_file_name(namespace: str, device: str, slot: int = 0) -> str:
    # device entries may be UUIDs ("GPU-1a2b..." or "MIG-..."): keep them file-name safe
    safe_device = re.sub(r"[^A-Za-z0-9._-]", "_", device)
    # slot 0 keeps the name of an unshared device's lock
    return f"gpu-{namespace}-{safe_device}.lock" if slot == 0 else f"gpu-{namespace}-{safe_device}.slot{slot}.lock"


def _open_lock_dir(lock_dir: Path) -> None:
    if not lock_dir.exists():
        lock_dir.mkdir(parents=True, exist_ok=True)
        # sticky and world-writable like /tmp: other users' jobs use the same devices
        with contextlib.suppress(PermissionError):
            os.chmod(lock_dir, 0o1777)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None if another job holds it."""
    # read-only is enough for flock and works on a lock file another user created
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fds: list[int]) -> None:
    for fd in fds:
        # closing the last fd of the open file drops the flock
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _cuda_already_initialised() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


@contextlib.contextmanager
def _visible_devices(devices: list[str], set_pci_order: bool) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    if set_pci_order and saved["CUDA_DEVICE_ORDER"] is None:
        # CUDA's default order is fastest-first; PCI order makes index k the same GPU
        # that nvidia-smi calls k
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def allocate_gpus(
    n: int,
    lock_dir: str | os.PathLike | None = None,
    n_devices: int | None = None,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    jobs_per_gpu: int | None = None,
) -> Iterator[list[str]]:
    """Hold ``n`` devices no other job on this host holds, for the ``with`` block.

    Yields the device entries, as written into ``CUDA_VISIBLE_DEVICES`` (inside the job
    they are ``cuda:0`` .. ``cuda:n-1``). ``n == 0`` yields ``[]`` and changes nothing: a
    CPU job. Waits while too few devices are free, all-or-nothing so that two jobs never
    each hold part of what the other needs; raises ``TimeoutError`` after ``timeout_s``
    (None: wait as long as it takes). ``n_devices`` replaces the host's device count
    (tests simulate devices with it on CPU). Must run before CUDA is initialised in this
    process: afterwards ``CUDA_VISIBLE_DEVICES`` has no effect. ``jobs_per_gpu`` (None: from
    the environment, see ``jobs_per_gpu_from_env``) is how many jobs may hold one device at once.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"allocate_gpus: n must be a non-negative integer, got {n!r}")
    shares = jobs_per_gpu_from_env() if jobs_per_gpu is None else jobs_per_gpu
    if isinstance(shares, bool) or not isinstance(shares, int) or shares < 1:
        raise ValueError(f"allocate_gpus: jobs_per_gpu must be a positive integer, got {shares!r}")
    if n == 0:
        yield []
        return
    if _cuda_already_initialised():
        raise RuntimeError(
            "allocate_gpus: CUDA is already initialised in this process, so setting "
            "CUDA_VISIBLE_DEVICES would have no effect; allocate before touching torch.cuda"
        )

    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if given is not None:
        pool = _parse_visible_devices(given)
        source = f"CUDA_VISIBLE_DEVICES={given}"
    else:
        count = n_devices if n_devices is not None else count_host_gpus()
        pool = [str(index) for index in range(count)]
        source = f"{count} device(s) on this host"
    if n > len(pool):
        raise RuntimeError(
            f"allocate_gpus: the job asks for {n} GPU(s) but only {len(pool)} can be used "
            f"({source}); lower the job's gpu resource (compute.gpus_per_job, or 0 for CPU)"
        )

    if slurm_job and given is not None and len(pool) == n:
        logger.info("using the GPU(s) SLURM job %s was given: %s", slurm_job, ",".join(pool))
        yield pool
        return

    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    _open_lock_dir(lock_dir)
    # jobs of different SLURM allocations may number their devices alike: never share locks
    namespace = socket.gethostname() + (f"-slurm{slurm_job}" if slurm_job else "")
    lock_paths = {
        (device, slot): lock_dir / _lock_file_name(namespace, device, slot) for device in pool for slot in range(shares)
    }

    held: list[int] = []
    held_devices: list[str] = []
    start = last_report = time.monotonic()
    try:
        while True:
            # slot 0 of every device before slot 1 of any: shared jobs spread over the devices
            for slot in range(shares):
                for device in pool:
                    if device in held_devices:
                        continue
                    fd = _try_lock(lock_paths[(device, slot)])
                    if fd is not None:
                        held.append(fd)
                        held_devices.append(device)
                        if len(held) == n:
                            break
                if len(held) == n:
                    break
            if len(held) == n:
                break
            # holding part of the request while waiting could deadlock two jobs
            _release(held)
            held_devices.clear()
            waited = time.monotonic() - start
            if timeout_s is not None and waited >= timeout_s:
                raise TimeoutError(
                    f"allocate_gpus: fewer than {n} of {len(pool)} GPU(s) free after "
                    f"{waited:.0f} s (locks in {lock_dir})"
                )
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                logger.info(
                    "waiting for %d free GPU(s) of %d for %.0f s (locks in %s)",
                    n,
                    len(pool),
                    waited,
                    lock_dir,
                )
            time.sleep(poll_s * random.uniform(0.5, 1.5))

        held_devices.sort(key=pool.index)
        sharing = f", up to {shares} jobs per device" if shares > 1 else ""
        logger.info("allocated GPU(s) %s (%s%s)", ",".join(held_devices), source, sharing)
        with _visible_devices(held_devices, set_pci_order=given is None):
            yield list(held_devices)
    finally:
        _release(held)
