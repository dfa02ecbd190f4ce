"""User-facing failures: the CLI prints their message as one line and exits non-zero."""


class TunerError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""

    exit_code = 2


class VerificationError(TunerError):
    """The compiled module disagrees with ONNX Runtime; nothing is written as the result."""

    exit_code = 3


class Interrupted(TunerError):
    """Ctrl-C: records already measured stay in the database."""

    exit_code = 130
