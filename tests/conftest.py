"""Fixtures shared by every test directory."""

from leakcheck import no_leaks

__all__ = ["no_leaks"]
