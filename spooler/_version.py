"""The spooler version, reported to the Cloud as ``gem_version``."""

__version__ = "0.1.0"
