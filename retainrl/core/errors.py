"""The one exception a user sees: a bad parameter or a missing input, named by its dotted key.

It lives alone so that every layer (config, the family registry, learners, retention methods)
can raise it without importing the config loader, which would close import cycles.
"""


class ConfigError(ValueError):
    """A bad parameter or a missing input; the message names the offending key or path."""
