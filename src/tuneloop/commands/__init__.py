"""Thin command layers shared by the CLI and pipelines: parse → build → call."""
