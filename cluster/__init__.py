"""Where candidates are built and measured: local worker processes now, Ray actors later."""
