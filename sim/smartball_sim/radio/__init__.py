"""The simulated radio between a SmartBall and its host: the link's timing (:mod:`.profiles`),
the seam between a device and what carries its link (:mod:`.seam`), the GATT database every
front serves (:mod:`.gatt_layout`) and the packets on the air (:mod:`.airlog`)."""
