"""User-facing errors: bad input is reported as one line, never as a traceback."""
import sys


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, arguments).

    The message must say what is wrong and how to fix it. Entry points catch it through
    :func:`run_main`, print ``error: <message>`` on one line to stderr and exit with status 2.
    """


def message(e: UserError) -> str:
    """The one line of a UserError. One raised in a DataLoader worker comes back re-raised with the worker's
    traceback in its text; its own message is the last line naming it."""
    text = str(e)
    if "\n" in text:
        lines = [line.split("UserError: ", 1)[1] for line in text.splitlines() if "UserError: " in line]
        text = lines[-1] if lines else " ".join(text.split())
    return text


def run_main(main, *args, **kwargs):
    """Call ``main``; turn a :class:`UserError` into one line on stderr and exit status 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        sys.stderr.write(f"error: {message(e)}\n")    # one write: the lines of several processes stay whole
        sys.stderr.flush()
        sys.exit(2)
