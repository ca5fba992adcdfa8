"""The fleet agent: the data plane on an engineer's machine, managed by a control plane."""
