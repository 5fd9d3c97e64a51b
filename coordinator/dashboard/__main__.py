"""`python -m coordinator.dashboard`: the dashboard as `tripmesh up` starts it."""

from coordinator.dashboard.server import main

if __name__ == "__main__":
    main()
