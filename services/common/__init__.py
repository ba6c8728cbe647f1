"""Code shared by every Polder service: envelope, schemas, bus, db, auth, settings, metrics."""
