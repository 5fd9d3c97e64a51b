"""`python -m services.flight`: serve FlightService on TRIPMESH_FLIGHT_PORT (50051) until SIGTERM."""

from services.flight.app import SPEC
from services.participant.runner import run_participant

run_participant(SPEC)
