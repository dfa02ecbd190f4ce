"""Step 3 of a run: MetaSchedule's search over the extracted tasks, in this process or in Ray
searcher actors, against the job's database (`job_database`), starting from the family's trained
cost model (`cost_model_training`), with every record a search found checked before it is
served (`record_checks`)."""
