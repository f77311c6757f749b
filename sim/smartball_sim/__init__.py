"""The simulated SmartBall: the device side of protocol v1, in the folders below, reached
only through ``pytest_smartball.targets``."""
