"""Pure dispatch domain: state machines, matching, surge. No I/O here."""
