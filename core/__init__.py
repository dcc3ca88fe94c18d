"""The contract between the ingress (serve_app/) and the model deployments (deployments/).

Both sides import this package and never each other: the error tree (errors.py), the values that
travel between them (transcript.py) and the audio and language facts they must agree on (audio.py).
"""
