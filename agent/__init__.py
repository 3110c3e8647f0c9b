"""aupguard: network-edge acceptable-use enforcement (DNS filter + mitmproxy addon, one policy)."""

__version__ = "0.1.0"
