"""Builders and small utilities the tests share (fixtures live in ``tests/conftest.py``)."""
