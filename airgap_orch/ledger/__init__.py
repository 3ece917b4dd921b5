"""The ledger: the only code that speaks SQL. One DuckDB file, one writer process."""

from .store import Ledger, Snapshot, Transaction

__all__ = ["Ledger", "Snapshot", "Transaction"]
