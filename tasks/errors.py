"""The root of towerflow's own errors, and which failures are expected.

An expected failure is one whose message tells the user what to fix: a towerflow error (bad input, a
refused model, a locked data directory, a bad setting), or the machine (a missing file, a full disk:
``OSError``). The command line prints those as one line. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class TowerflowError(Exception):
    """Base of every error towerflow raises on purpose; its message names what to fix."""

    # whether running the same command again can help (the stages finished so far are kept): not
    # when the input or the model itself is at fault
    rerun_helps = True


class ConfigError(TowerflowError, ValueError):
    """A setting has a value towerflow cannot run with; the message names the setting and the
    value.
    """


class DataError(TowerflowError, ValueError):
    """The data cannot support what was asked (too few ratings, a damaged file); the message says
    which.
    """


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain of stage wrappers (``raise ... from``)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def is_expected(exc: BaseException) -> bool:
    """True if ``exc`` (or what it wraps) is a towerflow error or an error of the machine, not a
    bug.
    """
    return isinstance(root_cause(exc), TowerflowError | OSError)
