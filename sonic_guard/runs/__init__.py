"""Runs: one generation end to end, under the memory guard.

In: a `JobRequest` (inputs, settings, plan policy). Out: the finished video and the report. `pipeline` chains the
stages, `guarded_run` retries on OOM, `long_audio`/`segments` split long audio into resumable segments.
"""
