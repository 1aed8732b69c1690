"""mmcli: a compact, offline-first vision-language toolkit for the command line."""

__version__ = "0.1.0"
