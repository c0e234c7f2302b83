"""Errors the command line turns into one clear line (exit code 2) instead of a traceback."""


class HarnessError(RuntimeError):
    """Bad input or an unreachable service, named with how to fix it."""
