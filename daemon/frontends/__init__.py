"""Front-ends: one module per wire protocol, each mapping its methods onto the session service."""
