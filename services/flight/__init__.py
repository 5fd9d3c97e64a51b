"""Flights: airports, routes and dated flights with three cabins each, and seat holds (FlightService)."""
