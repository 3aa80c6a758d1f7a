"""clawstream: AI-agent conversations as Avro events on Kafka."""
