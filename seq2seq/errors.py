"""What every one-line error message shares."""


def first_line(error: BaseException) -> str:
    """An exception's first line: what a one-line error message can quote of it."""
    return (str(error).strip().splitlines() or [""])[0]
