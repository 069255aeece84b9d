"""What the tests and the benchmarks both start or write: a real S3-compatible server process,
model files of every format. Not shipped in the wheel (only node, coordinator and modelcache are),
and not under tests/, so benchmarks never import the test suite."""
