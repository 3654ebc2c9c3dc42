"""UserError: the one-line, traceback-free exit for a mistake a user can make.

Torch-free, so every script and tool can use it. HW1_DEBUG=1 in the environment adds the
Python traceback (the original error and where the UserError was raised).
"""

import os
import sys
import traceback

DEBUG_ENV = "HW1_DEBUG"


class UserError(SystemExit):
    """A mistake the user can fix (bad path, bad file, wrong checkpoint).

    Subclassing SystemExit means an uncaught UserError prints its one-line message to stderr
    and exits with status 1, with no traceback, while tests can still catch it.

    Debugging: with HW1_DEBUG=1 in the environment (every script, hw1_1.sh and hw1_2.sh too),
    each UserError also prints, when raised, the traceback of the exception being handled (the
    original error of PIL, torch, the file system, ...) and the stack that raised it; the last
    line and the exit status stay the same.
    """

    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            _print_debug_traceback(f"error: {message}")


def _print_debug_traceback(message):
    cause = sys.exc_info()[1]
    lines = [f"--- {DEBUG_ENV}: traceback of `{message}`\n"]
    if cause is not None:
        lines += ["while handling:\n",  # the three-argument form runs on Python 3.8 too
                  *traceback.format_exception(type(cause), cause, cause.__traceback__)]
    # the frames up to the `raise UserError(...)`, without this helper and __init__
    lines += ["raised at:\n", *traceback.format_stack(sys._getframe(2))]
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


def first_line(error, limit=160):
    """The first line (or sentence) of an exception's message, shortened: torch and PIL write
    paragraphs, a UserError is one line."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if len(line) > limit and ". " in line:
        line = line.split(". ")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
