"""What each step of a deploy does, as plain functions of a step's context: no invoke task
is defined here (tasks/cli/). Imports the floors below only."""
