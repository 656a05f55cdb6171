"""User-facing errors.

Everything the toolkit raises because of bad input is an :class:`EraseError` with a one-line
message that names the bad value. The CLIs and the app catch it, print the message and exit
non-zero (or show it in the page); anything else is a bug.
"""


class EraseError(ValueError):
    """Bad input or an unusable model/file: the message is meant for the user."""


class ConceptNotFoundError(EraseError):
    """A concept is absent from a prompt or tokenizes to nothing."""
