"""Streaming side of TRAIL: the Faust app, agents, window state and the scoring loop."""
