"""Operations: each is written once here and reached through the doors (CLI now, HTTP later).

An operation validates its input (validation.py), runs one ledger transaction through the core,
and returns a JSON-ready dict, or raises an OrchError. It never prints and never exits.
"""
