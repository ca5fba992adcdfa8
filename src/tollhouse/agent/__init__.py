"""The fleet agent: Tollhouse on an engineer's machine (install, updates, and the agent loop)."""
