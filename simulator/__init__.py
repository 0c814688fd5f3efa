"""Software stand-in for every device a gateway drives, faithful on the wire.

The simulator imports neither ``controller`` nor ``drivers``: like another vendor's hardware it
shares nothing with the gateway but the documented protocols.
"""
