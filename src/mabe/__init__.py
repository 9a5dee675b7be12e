"""mabe: fast frame-level social-behaviour recognition from multi-animal pose tracking."""

__version__ = "0.1.0"
