"""The package version (one place: the artifact manifest, the cache keys and `kc --version` read it)."""

__version__ = "0.1.0"
