"""The error a user can cause through data: a missing file or column, NaNs, gaps, splits that come out empty.

datamodules/ imports nothing from pipelines/: the CLI maps this type, like every user-error type, to one line
and exit 2.
"""


class DataError(Exception):
    """A data problem the user can fix; the message is one line naming the culprit and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
