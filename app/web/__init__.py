"""The HTTP side: LitServe API server processes that receive, decode and answer uploads."""
