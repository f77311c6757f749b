"""The SmartBall OTA client: the contract, the link, the engine, and its two fronts (the
``smartball-ota`` CLI and the pytest plugin)."""
