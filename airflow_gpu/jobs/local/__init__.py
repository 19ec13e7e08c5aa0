"""The local backend (the embedded default for demos and development) and the supervisor that runs
each local job."""
