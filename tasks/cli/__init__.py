"""The top floor: every invoke task the operators call, and the chain that strings the
steps' tasks into a deploy."""
