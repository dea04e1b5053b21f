class CtxlmError(Exception):
    """A problem the user can fix (bad params, missing corpus, corrupt file).

    Stage CLIs print its message on one line and exit non-zero without a traceback."""
