"""User-facing errors: the CLI prints the message on one line and exits 1."""


class EdgespecError(Exception):
    """Base of every error a user can fix; its message names the values and the fix."""


class SourceError(EdgespecError):
    """A model source is unusable: bad path, corrupt or truncated file, unsupported architecture."""


class MissingPackageError(EdgespecError):
    """A Python package that holds model weights is not installed; the message has the pip command."""


class InputError(EdgespecError, ValueError):
    """A bad value from the caller (prompt, sampling value, option, stop string): a ValueError
    to Python code, a one-line message to the CLI and a 400 to the server."""


class BundleError(EdgespecError):
    """A bundle is unusable: missing or corrupt files, or a manifest that contradicts its graph."""
