"""The one error every backbone module raises (its own module, so that any of them can import it)."""


class BackboneError(ValueError):
    """A backbone name, option or model folder is unusable; the message says which and why."""
