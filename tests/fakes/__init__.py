"""Local substitutes for the services the pipeline talks to, speaking their real protocols."""
