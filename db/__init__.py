"""The tuning database: SQLAlchemy models, engine set-up, migrations and MetaSchedule's Database."""
