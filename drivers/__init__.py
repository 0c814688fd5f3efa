"""Device drivers: Modbus loudspeaker terminals, the AT-command FM transmitter, line arbiters.

Drivers speak only the documented wire protocols and never import ``controller``.
"""
