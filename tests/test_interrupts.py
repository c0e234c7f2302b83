"""Ctrl-C, SIGTERM and SIGHUP: at once outside a Tune run, at a safe point inside one (harness/execution/interrupts.py).
The signals are sent to this process itself; the end-to-end case (a real `harness run`) is in tests/test_faults.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.execution import interrupts


@pytest.fixture
def handlers():
    restore = interrupts.install()
    try:
        yield
    finally:
        restore()


def _send(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.2)  # the handler runs at the next bytecode, well within this


@pytest.mark.parametrize("sig", interrupts.SIGNALS)
def test_outside_a_tune_run_every_signal_raises_at_once(handlers, sig):
    with pytest.raises(KeyboardInterrupt, match=sig.name):
        _send(sig)
    assert interrupts.requested() is None


def test_inside_a_tune_run_the_first_signal_asks_and_the_exception_waits_for_the_end(handlers, monkeypatch, capfd):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with interrupts.graceful():
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune's own Ctrl-C handler stays out
            _send(signal.SIGTERM)
            assert interrupts.requested() == "SIGTERM"
            reached_the_end = True
    assert reached_the_end
    assert "SIGTERM: stopping the trials in progress" in capfd.readouterr().err
    assert interrupts.requested() is None, "the request belonged to the run that ended"
    with interrupts.graceful():  # the next run starts with no request
        pass


def test_a_second_signal_raises_at_once(handlers):
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        with interrupts.graceful():
            _send(signal.SIGHUP)
            _send(signal.SIGINT)
            pytest.fail("the second signal should have raised")


def test_an_error_the_stop_caused_becomes_the_interrupt_and_other_errors_pass(handlers):
    with pytest.raises(KeyboardInterrupt):
        with interrupts.graceful():
            _send(signal.SIGHUP)
            raise RuntimeError("Tune failed while its trials were being stopped")
    with pytest.raises(RuntimeError, match="a real failure"):
        with interrupts.graceful():
            raise RuntimeError("a real failure")


def test_without_our_handlers_tunes_own_ctrl_c_handler_is_left_on(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    with interrupts.graceful():
        assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_install_puts_the_previous_handlers_back():
    before = {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS}
    restore = interrupts.install()
    assert all(signal.getsignal(sig) is not before[sig] for sig in interrupts.SIGNALS)
    restore()
    assert {sig: signal.getsignal(sig) for sig in interrupts.SIGNALS} == before
