"""Targets, recipes and knobs: typed data that says what to build and how to run it."""
