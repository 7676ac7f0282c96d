"""Warren's client library for plugin authors and scripts (installed as ``warren.client``)."""
