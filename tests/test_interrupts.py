"""Ctrl-C during tuning is noted and raised after the block, never inside TVM's calls."""

from __future__ import annotations

import pytest

from tuner import interrupts


def test_ctrl_c_during_a_search_is_noted_then_raised_when_the_block_ends() -> None:
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_sigint()  # outside a search: at once
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred_interrupts():
            assert not interrupts.requested()
            interrupts.on_sigint()  # does not raise here, inside the search's callbacks
            assert interrupts.requested()  # the searches see it and end
            with interrupts.deferred_interrupts():  # nested: raised only by the outermost block
                pass
    # The next run starts with no Ctrl-C pending.
    with interrupts.deferred_interrupts():
        assert not interrupts.requested()
