"""Warren's MCP client: MCP servers (stdio and streamable HTTP) as a tool source.

Written on the daemon's own JSON-RPC plumbing (``protocol/peer.py``, ``transport/``)
rather than the official SDK, whose client import costs about 0.5 s and 56 MB of RSS here;
this package costs under a millisecond on top of the daemon's own modules. A transport is
imported when the first server of its kind starts (stdio: ~3 ms; HTTP: ~16 ms, most of it
``ssl``, for the providers' own HTTP client ``providers/wire.py``, where httpx took ~165 ms).
"""

from .manager import McpManager
from .types import McpCallResult, McpError, McpServerSpec, McpServerStatus, McpTool

__all__ = ["McpManager", "McpServerSpec", "McpTool", "McpCallResult", "McpServerStatus", "McpError"]
