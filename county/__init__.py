"""The county centre: watches every township gateway over MQTT and sends it signed commands."""
