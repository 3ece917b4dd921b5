"""The control plane: a server that owns the ledger and serves the operations over HTTP."""
