"""thermograd trainer."""
