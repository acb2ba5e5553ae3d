"""Maintenance tools run as `python -m omnic.tools.<name>`."""
