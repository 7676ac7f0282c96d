"""Warren's wire contract as pure data: types, error codes, framing and envelopes.

Nothing here performs I/O, so a client library or a test can import it without
starting an event loop, opening a database or touching stdio.
"""

PROTOCOL_VERSION = 1
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_PAGE_SIZE = 1000
#: While more lines than this wait for a slow client, its adjacent deltas are merged.
DEFAULT_COALESCE_AFTER_LINES = 1024
#: The largest image a prompt may carry, decoded (the providers' own limit is about this).
MAX_IMAGE_BYTES = 5 * 1024 * 1024
