"""The error every entry point reports as a configuration problem (exit status 2)."""


class ConfigError(ValueError):
    """A wrong setting (flag, folder, file choice): refused before any data is read, exit status 2,
    one line naming it."""
