"""The VM audit's clean-up guarantee that needs no VM: a SIGTERM unwinds like Ctrl-C."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kiln.vmaudit import interrupted_by_sigterm


def test_sigterm_unwinds_the_with_block_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    cleaned_up = []
    with pytest.raises(KeyboardInterrupt), interrupted_by_sigterm():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once when the handler raises
        finally:
            cleaned_up.append(True)  # where booted() powers the VM off and removes the overlay
    assert cleaned_up == [True]
    assert signal.getsignal(signal.SIGTERM) is before
