"""Search spaces, schedule rules, default schedules and cost model set-up, per target."""
