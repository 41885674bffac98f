"""Logging and progress for workflow jobs.

``job_logging`` sends Python logging and stderr (where tqdm draws) to the rule's log file,
so a long step shows its progress in ``logs/`` while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_logging(log_path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    logger = logging.getLogger("refusal_ablation")
    if log_path is None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        yield logger
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_stderr = sys.stderr
        sys.stderr = fh
        try:
            yield logger
        except BaseException:
            logger.exception("job failed")
            raise
        finally:
            sys.stderr = old_stderr
            root.removeHandler(handler)


class RateLogger:
    """Periodic progress lines with counts and rates, for loops without tqdm."""

    def __init__(self, logger: logging.Logger, total: int, unit: str, every_s: float = 10.0):
        self.logger, self.total, self.unit, self.every_s = logger, total, unit, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1, **extra) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            tail = " ".join(f"{k}={v}" for k, v in extra.items())
            self.logger.info("%d/%d %s (%.1f %s/s) %s", self.done, self.total, self.unit, rate, self.unit, tail)
