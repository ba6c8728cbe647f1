"""Billing service: every online second accounted — segments, fares, pay policies, ledger."""
