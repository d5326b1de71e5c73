"""What composes the steps: how one step is performed and reported, a run's closing
screen, a federation's members' phase, recovery after a failure, doctor's checks."""
