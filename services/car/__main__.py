"""`python -m services.car`: serve CarService on TRIPMESH_CAR_PORT (50055) until SIGTERM."""

from services.car.app import SPEC
from services.participant.runner import run_participant

run_participant(SPEC)
