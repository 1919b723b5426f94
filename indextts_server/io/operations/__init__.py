"""Operations: the command line, logging, Prometheus metrics and the systemd notify protocol."""
