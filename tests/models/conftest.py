"""Shared fixtures of the model tests: the golden-test fixtures (torch, timm,
open_clip) live in tests/conftest.py."""
