"""The console without Ray: the progress line, the quiet environment, the harmless-message
filters. (The whole job's console is read in tests/test_cli.py.)"""

from __future__ import annotations

import io
import logging

import pytest

from ttpa_ray import console


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_prints_a_line_per_interval_off_a_tty_and_rewrites_one_on_a_tty():
    out = io.StringIO()
    bar = console.Progress("construct", 4, every_s=0.0, stream=out)
    for i in range(1, 5):
        bar.update(i)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("construct: 1/4 rows (25%)") and lines[-1].startswith("construct: 4/4 rows (100%)")
    assert len(lines) == 5  # 4 updates + the final line
    tty = _Tty()
    bar = console.Progress("sample", None, every_s=0.0, stream=tty)
    bar.update(3)
    bar.close()
    assert tty.getvalue().count("\n") == 1 and tty.getvalue().startswith("\rsample: 3 rows")


def test_progress_off_a_tty_waits_its_interval():
    out = io.StringIO()
    bar = console.Progress("evaluate", 100, every_s=3600, stream=out)
    for i in range(1, 101):
        bar.update(i)
    bar.close()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the final line
    assert "100/100" in out.getvalue()


def test_collect_keeps_every_row():
    rows = [{"id": i} for i in range(7)]
    assert console.collect(iter(rows), "x", 7) == rows


def test_quiet_env_is_off_when_verbose(monkeypatch):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    assert console.quiet_env()["TQDM_DISABLE"] == "1"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.quiet_env() == {console.VERBOSE_ENV: "1"}


def test_harmless_messages_are_dropped_and_others_kept(monkeypatch, caplog):
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    name = "ray._private.authentication.authentication_token_setup"
    log = logging.getLogger(name)
    before = list(log.filters)
    try:
        console.setup_worker()
        with caplog.at_level(logging.INFO, logger=name):
            log.warning("Token authentication is enabled for this Ray cluster.")
            log.warning("the token file is unreadable")
        assert [r.getMessage() for r in caplog.records] == ["the token file is unreadable"]
    finally:
        log.filters[:] = before


@pytest.mark.parametrize("name", sorted(console.HARMLESS))
def test_each_harmless_pattern_matches_its_message(name):
    examples = {"Token": "Token authentication is enabled for this Ray cluster.",
                "Failed": "Failed to query Ray Train Controller actor state. State API may be down.",
                "Progress": "Progress bars disabled. To enable, set ...",
                "Triton": "Triton not available, find_triton_kernels = []"}
    pattern = console.HARMLESS[name]
    assert any(pattern.search(text) for text in examples.values())
