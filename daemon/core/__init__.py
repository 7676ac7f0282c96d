"""The core: the session service, the turn, tool sources and the event bus (the sole owner of ``seq``)."""
