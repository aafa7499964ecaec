"""Experiment scripts (`python -m experiments.<name>`)."""
