"""The worker: the separate process in which student code runs, and the trusted client that drives it.

    protocol.py   framing of messages on the pipes, and their safe encoding (torch.save / weights_only load)
    bootstrap.py  the worker process itself (stdlib + torch only); it never computes a verdict
    client.py     the trusted side: start, load the submission, call probes under a deadline, restart on faults
"""
