"""The errors a user's input can cause, in a module that imports nothing heavy.

Checks that run before any step (the CLI, preflight, the LM service's request validation) raise these without paying
for torch or pandas; ``kubeforge.data`` and ``kubeforge.models`` re-export them where the classifier code expects
them. ConfigError (settings) lives in ``kubeforge.config``.
"""


class DataError(ValueError):
    """The data was refused; the message names the problem and where it is."""


class ModelError(ValueError):
    """A model could not be built, saved or loaded; the message names the cause."""
