"""Reproducible studies. Each returns plain data (dataclasses / dicts) that the report renders."""
