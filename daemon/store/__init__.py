"""The SQLite store: the writer and its connections (``db``), one module per table group,
and the named migrations."""

from .db import Connection, Store, default_db_path, drive, store_error

__all__ = ["Connection", "Store", "default_db_path", "drive", "store_error"]
