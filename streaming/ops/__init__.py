"""Operating Riskstream: the local session cluster, Flink's REST API, Kafka tools, health checks,
the Python worker watchdog and the failover drill."""
