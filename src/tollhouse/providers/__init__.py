"""Provider protocol layers: parse requests, read usage, shape errors. No I/O here."""
