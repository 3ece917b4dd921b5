"""Python worker SDK: talks HTTP to a running `airgap-orch serve`. Loads neither DuckDB nor pyarrow."""

from .client import OrchClient

__all__ = ["OrchClient"]
