"""The call: sans-I/O state machine, playback ledger, barge-in, pacing; session glue."""
