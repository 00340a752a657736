"""The one exception type for errors a user can cause (config, data, paths, registry names).

The CLI prints its message as one line, without a traceback, and exits with `exit_code`.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names the culprit and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: multi-line messages from libraries are folded here.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A config that does not compose or does not match its schema."""
