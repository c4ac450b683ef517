"""The exceptions the CLI turns into an exit code: bad input (2), a storage that stayed down (1).

Dependency-free, so the CLI catches them without importing what raises them.
"""


class UsageError(ValueError):
    """Bad input from the user: the message says what to fix.

    The CLI prints it as one line and exits with code 2; the Python API raises it.

    >>> raise UsageError("unknown task 'cifar'; known tasks: cifar10, digits, mnist, or module:function")
    Traceback (most recent call last):
    ...
    autoopt.errors.UsageError: unknown task 'cifar'; known tasks: cifar10, digits, mnist, or module:function
    """


class StorageDown(RuntimeError):
    """The storage stayed unreachable after retries (exit code 1); ``autoopt.study`` re-exports it."""


class StudyStopped(RuntimeError):
    """The study stopped itself (exit code 1): its first trials all failed with one error, which
    the message names in one line (a user's bug must not cost the whole study's trials)."""
