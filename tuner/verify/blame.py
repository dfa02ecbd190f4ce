"""Which tuned records make a model fail verification when each of them passed its own check.

A kernel check runs random inputs; a model feeds real activations (value ranges, NaN-free
softmax rows, fp16 magnitudes) that a wrong schedule may mishandle where random inputs did not.
Rather than end such a run with nothing, the tasks to blame are found by compiling with some
tuned records withheld (those tasks get their default schedules) and bisecting, and the module
built without them is returned.
"""

from __future__ import annotations

from collections.abc import Callable


class TooManyAttempts(RuntimeError):
    """The bisection would need more compilations than it may spend."""


def find_culprits(suspects: list[int], verifies: Callable[[set[int]], bool], max_attempts: int = 24) -> list[int] | None:
    """The suspects (task indices, each holding a tuned record) to withhold for the model to
    verify: ``verifies(withheld)`` compiles with the records of ``withheld`` replaced by default
    schedules and checks the output. Called after the module with none withheld failed.

    Each culprit costs about log2(len(suspects)) + 1 compilations: a binary search for the
    shortest prefix of the suspects whose records (the rest withheld) already fail; its last
    task is to blame. Returns None when even every suspect withheld fails (the default
    schedules are wrong, nothing to blame on records); raises TooManyAttempts past
    ``max_attempts`` compilations."""
    attempts = 0

    def attempt(withheld: set[int]) -> bool:
        nonlocal attempts
        if attempts >= max_attempts:
            raise TooManyAttempts(f"more than {max_attempts} compilations")
        attempts += 1
        return verifies(withheld)

    if not attempt(set(suspects)):
        return None
    culprits: list[int] = []
    remaining = list(suspects)
    while remaining:
        # f(k): verifies with remaining[:k] served, remaining[k:] and the culprits withheld.
        # f(0) holds (checked above or in the previous round), f(len) does not.
        lo, hi = 0, len(remaining)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt({*culprits, *remaining[mid:]}):
                lo = mid
            else:
                hi = mid
        culprits.append(remaining.pop(hi - 1))
        if attempt(set(culprits)):
            return culprits
    return culprits
