"""Bridges to other training frameworks (import the submodule you need: each pulls in its framework)."""
