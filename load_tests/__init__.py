"""Load tests: the Locust user (locustfile.py), bounded headless runs (headless.py) and the soak (soak.py)."""
