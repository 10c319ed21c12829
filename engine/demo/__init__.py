"""Tiny random-init models for `paintbridge serve --demo` and the tests."""
