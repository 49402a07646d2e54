"""The endpoint lifecycle: a run's hold on its endpoint, from wake-up to rest, and after a crash.

Modules: `lease` (EndpointLease: enter = wake + wait, leave = rest), `pricing` (the price and
whether the budget covers one quantum), `watchers` (the state and budget watcher tasks),
`rest` (what each `on_exit` means, applied and confirmed), `registry` (the live leases in
batchrun's home), `watchdog` (the process that survives a kill -9 of its runner) and `reaper`
(`batchrun reap`: dead leases put to rest). Nothing is imported here, so that the watchdog
process loads only what it uses.
"""
