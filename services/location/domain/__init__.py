"""Pure location domain: ping screening and the H3 position index. No I/O here."""
