"""The deploy pipeline's steps and what they share (see tasks.py, the entry point)."""
