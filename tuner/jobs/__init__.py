"""Jobs of `tuner serve`: where their files live, the worker that runs them, the process each runs in."""
