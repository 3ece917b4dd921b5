"""The command line: click groups by noun. Thin: parse, call an operation, render."""
