"""The endpoint lifecycle: a run's hold on its endpoint, from wake-up to rest, and after a crash.

Modules: `lease` (EndpointLease: enter = wake + wait, leave = rest), `drift` (the endpoint
found, checked against the job), `wake` (update, create or resume it, and wait until it
serves), `cost` (its price, meter and budget), `watchers` (the state and budget watchers),
`rest` (what each `on_exit` means, applied and confirmed), `guard` (the lease file and the
watchdog of one lease), `registry` (the live leases in batchrun's home), `watchdog` (the process that
survives a kill -9 of its runner) and `reaper` (`batchrun reap`: dead leases put to rest).
`pricing` prices an endpoint; `scaling` decides the replicas `[budget] deadline` needs
(`[run] scale = "deadline"`), and `scaler` asks for them and puts the endpoint's own scaling
back. Nothing is imported here, so that the watchdog process loads
only what it uses.
"""
