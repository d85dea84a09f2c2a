"""Operations: the embedded broker launcher, Kafka client settings, and compatibility shims."""
