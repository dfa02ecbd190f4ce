"""`tuner serve`: the HTTP service where teams submit tuning jobs and download compiled modules."""
