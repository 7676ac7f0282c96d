"""The stdio transport: the fd reader, the single writer, and a JSON-RPC peer that knows no method names."""
