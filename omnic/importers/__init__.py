"""Importers: checkpoints of other projects as omnic specs and canonical weights."""
