"""The one exception type for bad input."""


class UsageError(ValueError):
    """Bad input from the user: the message says what to fix.

    The CLI prints it as one line and exits with code 2; the Python API raises it.

    >>> raise UsageError("unknown task 'cifar'; known tasks: cifar10, digits, mnist, or module:function")
    Traceback (most recent call last):
    ...
    autoopt.errors.UsageError: unknown task 'cifar'; known tasks: cifar10, digits, mnist, or module:function
    """
