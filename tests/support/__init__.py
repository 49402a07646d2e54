"""Test helpers (no tests here): `endpoint_app` (the test inference endpoint with fault knobs,
also a pytest plugin), `run` (`batchrun run` jobs on it as real processes, reading outputs and
the run state), `lifecycle` (jobs on the local service, a faulty control-plane proxy) and
`waiting` (the one `wait_for`)."""
