"""Passwords in URLs never reach a message or a log line: ``mask_url``, ``redact``, ``redact_logs``.

Dependency-free (the standard library only), so any module may use it, the CLI's error path
included.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# scheme://user:password@ (up to the last "@" of the token, for passwords with a raw "@": better
# hide too much) and libpq's password=... settings.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<pw>\S+)@")
_KEY_PASSWORD = re.compile(r"(?i)(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, params and messages).

    >>> mask_url("postgresql+psycopg://autoopt:s3cret@db:5432/optuna")
    'postgresql+psycopg://autoopt:***@db:5432/optuna'
    """
    return redact(url)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it, and of every ``password=`` setting,
    replaced by ``***``.

    >>> redact("cannot reach http://me:pa55@mlflow:5000/api; dsn host=db password=pa55 user=me")
    'cannot reach http://me:***@mlflow:5000/api; dsn host=db password=*** user=me'
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", text)
    return _KEY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def redact_logs() -> None:
    """Make every log record of this process pass through ``redact`` (its message, arguments
    and traceback), whatever logger or handler it goes to: a library's error message may
    quote a URL with its password (MLflow's REST errors do). Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_autoopt_redacts", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: leave it to the handler to report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    make_record._autoopt_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
