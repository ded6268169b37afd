"""The one exception type a user can cause."""


class FastvizError(ValueError):
    """Bad input from the caller: the message names the argument, what was expected and what came."""
