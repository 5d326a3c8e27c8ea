"""A toy order gateway fleet: the real target for tests and the incident replay."""
