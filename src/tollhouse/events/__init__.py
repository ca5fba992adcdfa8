"""Call events: what every call through the gateway leaves behind."""
