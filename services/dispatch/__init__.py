"""Dispatch service: orders, offers, batched H3 matching and the trip lifecycle."""
