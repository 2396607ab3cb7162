"""Every REST method the sandbox implements, one module per family."""

from sandbox.methods import system  # noqa: F401
