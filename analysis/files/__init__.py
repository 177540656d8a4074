"""Offline inputs: one reader per file format, and their samples on one grid."""
