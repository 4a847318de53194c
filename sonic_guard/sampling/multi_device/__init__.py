"""One video on several devices of one machine: ranks split each denoising step's windows (torch.distributed).

`devices` parses and checks the user's device list, `launcher` starts, watches and reaps the worker processes,
`worker` is what each rank runs, `exchange` is the collective the sampler uses to share window results.
"""
