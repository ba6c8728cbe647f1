"""Polder: a dispatch backend that accounts for every online second of every worker."""
