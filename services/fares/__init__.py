"""Fares: one implementation of tariffs and fare lines, used by dispatch quotes and billing."""
