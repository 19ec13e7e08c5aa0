"""The AWS Batch backend: the backend itself, lean reply decoding, the CloudWatch Logs reader and
the Airflow connection it signs with."""
