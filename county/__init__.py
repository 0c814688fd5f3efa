"""The county centre: one service that watches every township gateway through the MQTT contract.

It reaches gateways only through docs/mqtt.md (topics and payloads) and docs/county-commands.md
(signed commands); it imports no gateway internals except ``controller.uplink.signing``.
Modules: config (the YAML file), store (history database), gaps (seq gaps and their causes),
ingest (MQTT → store and picture), picture (the live in-memory view), api (FastAPI), service
(wiring), cli (``ebc county``).
"""
