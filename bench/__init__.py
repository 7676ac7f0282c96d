"""Warren's benchmark: ``make bench`` (``python -m bench``).

It measures the real daemon from the outside, the way an editor plugin sees it: a
subprocess spoken to over its stdin/stdout pipes. Nothing here imports the daemon's
serving code (only its schema, to build large databases quickly), so the numbers include
interpreter start-up, JSON framing, the event loop and SQLite, and nothing else.

It prints numbers and whether each target is met; it never fails on a slow number. It
exits non-zero only when a measurement could not be taken (the daemon crashed, answered
with an error, or broke the protocol).
"""
