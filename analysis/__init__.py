"""thermograd analysis."""
