"""Command-line interface: thin parsers that call library functions."""
