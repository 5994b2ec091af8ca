"""Errors raised by the lab."""


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why and what to do."""


class LabTimeout(LabError):
    """A poll reached its deadline."""
