"""The MySQL mirror: the server dialect (`dialect`), the connector's driver
(`driver`), and the session that drains and reconciles (`session`)."""
