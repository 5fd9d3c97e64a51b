"""The car rental participant: a fleet per city by car class, held by the day."""
