"""The error a user can cause through model settings (model.embedding_path, model.patch, ...).

models/ imports nothing from pipelines/: the CLI maps this type, like every user-error type, to one line and
exit 2.
"""


class ModelError(Exception):
    """A model setting that does not fit the data; the message is one line naming the key and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
