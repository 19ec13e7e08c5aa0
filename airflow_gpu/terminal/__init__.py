"""`airflow-gpu submit | logs | status | cancel | jobs`: GPU jobs from a terminal, without Airflow.

No Airflow database, home, configuration or connection is read: AWS credentials come from
the standard chain (or --profile, --region, --endpoint-url), and the jobs are watched by the
same JobWatcher and LogFollower as the triggerer's. One module per subcommand; common options
and the backend target in :mod:`.options`, the live view of a job in :mod:`.follow`.
"""
