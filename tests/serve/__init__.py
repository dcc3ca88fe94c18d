"""Serve tier (fast, in the default run): the app under Ray Serve with fake holders, no model weights."""
