"""Polder: an event-driven dispatch backend that accounts for every online second of every worker."""
