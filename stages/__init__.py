"""Thin DVC stage commands: parse params, call the library, write artifacts."""
