"""Operations: the command line and its flags, logging, Prometheus metrics and the systemd notify protocol."""
