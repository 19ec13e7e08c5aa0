"""The container wing: runs inside the GPU image. It never imports airflow."""
