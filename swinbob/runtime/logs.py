"""Console logging of the entry points (training, evaluation, SOLF, the demo): one format, one set-up."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def formatter() -> logging.Formatter:
    """Timestamped ``LEVEL logger: message`` lines (also used for evaluation's ``evaluate.log``)."""
    return logging.Formatter(FORMAT, DATE_FORMAT)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Show the toolkit's (``swinbob.*``) messages at ``level`` and above on stderr.

    A console handler is added only if the application has configured none (as
    :func:`logging.basicConfig`); other libraries' loggers are left at their levels.
    """
    logging.basicConfig(format=FORMAT, datefmt=DATE_FORMAT)
    logging.getLogger("swinbob").setLevel(level)
