"""Warren's runtime: stdio server, session service, store, turn loop and providers."""

__version__ = "0.1.0"
