"""Benchmarks that hold rtvoice to its numbers (``python -m rtvoice bench [dsp|load|quality]``).

* :mod:`~rtvoice.bench.dsp`: the audio core per 20 ms frame against audioop, numpy and soxr, with budgets.
* :mod:`~rtvoice.bench.load`: calls per core, simulated Twilio calls against one pinned server process.
* :mod:`~rtvoice.bench.quality`: barge-in policies under echo, noise and frame loss.

The pytest suites in the repository's ``bench/`` folder run reduced versions of these with their budgets.
"""
