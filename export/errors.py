"""User-facing errors: the CLI prints the message on one line and exits 1."""


class EdgespecError(Exception):
    """Base of every error a user can fix; its message names the values and the fix."""


class SourceError(EdgespecError):
    """A model source is unusable: bad path, corrupt or truncated file, unsupported architecture."""


class MissingPackageError(EdgespecError):
    """A Python package that holds model weights is not installed; the message has the pip command."""
