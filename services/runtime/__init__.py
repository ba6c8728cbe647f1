"""Running Polder locally: embedded Postgres and broker, and the `polder up` supervisor."""
