"""Why the agent stops by itself: a setting it cannot serve (`StartError`), named in one line."""

from __future__ import annotations

from collections.abc import Iterator


class StartError(Exception):
    """The agent cannot run as configured; the message starts with the setting at fault
    (``webServer.port: cannot listen on 127.0.0.1:7400: Address already in use``)."""


def start_errors(error: BaseException) -> list[StartError] | None:
    """The StartErrors `error` consists of (trio wraps what tasks raise in exception groups), or
    None when it holds anything else."""
    leaves = list(_leaves(error))
    return leaves if leaves and all(isinstance(e, StartError) for e in leaves) else None  # type: ignore[return-value]


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
