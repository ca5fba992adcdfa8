"""Local fakes of the LLM provider HTTP APIs, for tests, demos and benchmarks."""
